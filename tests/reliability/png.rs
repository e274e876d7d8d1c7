//! A dependency-free PNG writer (stored deflate blocks) and the renewal-spread plot of
//! the simulated day: renewals per time bucket as bars (top) and the minimum remaining
//! token lifetime over all Secrets as a line (bottom), both against time.

use std::path::Path;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Writes bits least significant first, as deflate packs them.
struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        for k in 0..count {
            self.acc |= ((value >> k) & 1) << self.n;
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc as u8);
                (self.acc, self.n) = (0, 0);
            }
        }
    }

    /// A Huffman code goes most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        for k in (0..len).rev() {
            self.put((code >> k) & 1, 1);
        }
    }

    fn literal(&mut self, v: u32) {
        match v {
            0..=143 => self.code(0x30 + v, 8),
            144..=255 => self.code(0x190 + v - 144, 9),
            256..=279 => self.code(v - 256, 7),
            _ => self.code(0xc0 + v - 280, 8),
        }
    }
}

/// Deflate's length codes: (first length, extra bits) for codes 257..=285.
const LENGTHS: [(u32, u32); 29] = [
    (3, 0),
    (4, 0),
    (5, 0),
    (6, 0),
    (7, 0),
    (8, 0),
    (9, 0),
    (10, 0),
    (11, 1),
    (13, 1),
    (15, 1),
    (17, 1),
    (19, 2),
    (23, 2),
    (27, 2),
    (31, 2),
    (35, 3),
    (43, 3),
    (51, 3),
    (59, 3),
    (67, 4),
    (83, 4),
    (99, 4),
    (115, 4),
    (131, 5),
    (163, 5),
    (195, 5),
    (227, 5),
    (258, 0),
];

fn deflate_runs(raw: &[u8]) -> Vec<u8> {
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // final block
    bits.put(1, 2); // fixed Huffman codes
    let mut i = 0;
    while i < raw.len() {
        // The longer of a repeat of the last byte (distance 1) or of the last RGB pixel
        // (distance 3, distance code 2).
        let run_at = |d: usize| {
            if i < d {
                return 0;
            }
            (0..258.min(raw.len() - i))
                .take_while(|&k| raw[i + k] == raw[i + k - d])
                .count()
        };
        let (run, dist_code) = match (run_at(1), run_at(3)) {
            (a, b) if b > a => (b, 2),
            (a, _) => (a, 0),
        };
        if run >= 3 {
            let code = LENGTHS
                .iter()
                .rposition(|&(base, _)| base as usize <= run)
                .unwrap_or(0);
            let (base, extra) = LENGTHS[code];
            bits.literal(257 + code as u32);
            bits.put(run as u32 - base, extra);
            bits.code(dist_code, 5);
            i += run;
        } else {
            bits.literal(raw[i] as u32);
            i += 1;
        }
    }
    bits.literal(256);
    if bits.n > 0 {
        bits.out.push(bits.acc as u8);
    }
    bits.out
}

/// RGB pixels, row-major, `width * height * 3` bytes.
pub fn encode(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity((width as usize * 3 + 1) * height as usize);
    for row in rgb.chunks(width as usize * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    // zlib: one deflate block with the fixed Huffman codes, repeats coded as matches at
    // distance 1 or 3 (a plot is mostly runs of one colour).
    let mut z = vec![0x78, 0x01];
    z.extend_from_slice(&deflate_runs(&raw));
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + byte as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }
    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }
}

/// Bars of `renewals[i]` (count in bucket i) over a line of `min_remaining` (time,
/// seconds) sharing the x axis `0..span` seconds. A red line marks zero remaining.
pub fn plot_renewals(
    path: &Path,
    renewals: &[u64],
    bucket_secs: f64,
    min_remaining: &[(f64, f64)],
) -> std::io::Result<()> {
    let (w, h) = (1000usize, 500usize);
    let (left, right) = (40usize, w - 20);
    let mut c = Canvas::new(w, h);
    let span = (renewals.len() as f64 * bucket_secs)
        .max(min_remaining.last().map_or(0.0, |p| p.0))
        .max(1.0);
    let x_of = |t: f64| left + ((t / span) * (right - left) as f64) as usize;
    // Top panel: renewals per bucket.
    let (top0, top1) = (20usize, 230usize);
    let max_r = renewals.iter().copied().max().unwrap_or(1).max(1) as f64;
    for (i, &n) in renewals.iter().enumerate() {
        let x0 = x_of(i as f64 * bucket_secs);
        let x1 = x_of((i + 1) as f64 * bucket_secs).saturating_sub(1).max(x0);
        let y = top1 - ((n as f64 / max_r) * (top1 - top0) as f64) as usize;
        c.rect(x0, y, x1, top1, [60, 110, 200]);
    }
    // Bottom panel: minimum remaining lifetime.
    let (bot0, bot1) = (270usize, 480usize);
    let max_m = min_remaining.iter().map(|p| p.1).fold(1.0f64, f64::max);
    let min_m = min_remaining.iter().map(|p| p.1).fold(0.0f64, f64::min);
    let y_of = |v: f64| bot1 - (((v - min_m) / (max_m - min_m)) * (bot1 - bot0) as f64) as usize;
    c.rect(left, y_of(0.0), right, y_of(0.0), [220, 40, 40]);
    let mut last: Option<(usize, usize)> = None;
    for &(t, v) in min_remaining {
        let p = (x_of(t), y_of(v));
        if let Some(q) = last {
            c.rect(q.0, q.1, p.0, q.1, [20, 140, 60]);
            c.rect(p.0, q.1, p.0, p.1, [20, 140, 60]);
        }
        last = Some(p);
    }
    // Axes.
    for (y0, y1) in [(top0, top1), (bot0, bot1)] {
        c.rect(left - 1, y0, left - 1, y1, [0, 0, 0]);
        c.rect(left - 1, y1, right, y1, [0, 0, 0]);
    }
    std::fs::write(path, encode(w as u32, h as u32, &c.px))
}

#[test]
fn png_has_signature_chunks_and_valid_crc() {
    let png = encode(2, 2, &[0u8; 12]);
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    // CRC of IHDR covers type and data (4 + 13 bytes) and sits after them.
    let crc = u32::from_be_bytes(png[29..33].try_into().unwrap());
    assert_eq!(crc, crc32(&png[12..29]));
    assert_eq!(
        crc32(b"123456789"),
        0xcbf4_3926,
        "the standard CRC-32 check value"
    );
    assert!(png.ends_with(&[0xae, 0x42, 0x60, 0x82]), "IEND's fixed CRC");
    let white = encode(1000, 500, &vec![255u8; 1000 * 500 * 3]);
    assert!(
        white.len() < 30_000,
        "runs are compressed: {} bytes",
        white.len()
    );
}
