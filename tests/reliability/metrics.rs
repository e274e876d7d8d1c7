//! Prometheus text parsing and the chart's alert expressions evaluated over scraped
//! samples, as Prometheus would evaluate them (instant vectors at each scrape).

pub use crate::support::metrics::{parse, sum};

/// The `expr:` of alert `alert` in the chart's PrometheusRule template.
pub fn chart_alert_expr(template: &str, alert: &str) -> Option<String> {
    let mut lines = template
        .lines()
        .skip_while(|l| !l.contains(&format!("alert: {alert}")));
    lines.next()?;
    lines
        .take_while(|l| !l.contains("- alert:"))
        .find_map(|l| l.trim().strip_prefix("expr:").map(|e| e.trim().to_string()))
}

/// `METRIC - time() < THRESHOLD`, the shape of the chart's expiry alert, with the
/// template's threshold placeholder filled in.
pub struct ExpiryAlert {
    pub metric: String,
    pub threshold: f64,
}

impl ExpiryAlert {
    pub fn from_expr(expr: &str, threshold: f64) -> Option<Self> {
        let (lhs, _) = expr.split_once('<')?;
        let metric = lhs.trim().strip_suffix("- time()")?.trim().to_string();
        Some(Self { metric, threshold })
    }

    /// First scrape time at which the alert fires: the expression held at every scrape
    /// of the last `for_secs` (Prometheus' `for`). `scrapes` is (unix time, value).
    pub fn fires_at(&self, scrapes: &[(f64, Option<f64>)], for_secs: f64) -> Option<f64> {
        let mut pending_since: Option<f64> = None;
        for &(t, v) in scrapes {
            match v {
                Some(expiry) if expiry - t < self.threshold => {
                    let since = *pending_since.get_or_insert(t);
                    if t - since >= for_secs {
                        return Some(t);
                    }
                }
                _ => pending_since = None,
            }
        }
        None
    }
}

/// `increase(COUNTER[window]) > 0` held for `for_secs`: first scrape time it fires.
pub fn increase_fires_at(scrapes: &[(f64, f64)], window: f64, for_secs: f64) -> Option<f64> {
    let mut pending_since: Option<f64> = None;
    for (i, &(t, v)) in scrapes.iter().enumerate() {
        let base = scrapes[..i]
            .iter()
            .rev()
            .take_while(|(u, _)| t - u <= window)
            .last()
            .map(|&(_, b)| b);
        if base.is_some_and(|b| v > b) {
            let since = *pending_since.get_or_insert(t);
            if t - since >= for_secs {
                return Some(t);
            }
        } else {
            pending_since = None;
        }
    }
    None
}

#[test]
fn expiry_alert_reads_the_chart_and_fires_after_its_for() {
    let template = "        - alert: AcsTokenExpiringSoon\n          expr: acs_operator_token_expiry_timestamp_seconds - time() < {{ .Values.x }}\n        - alert: Other\n          expr: up == 0\n";
    let expr = chart_alert_expr(template, "AcsTokenExpiringSoon").unwrap();
    let alert = ExpiryAlert::from_expr(&expr, 10.0).unwrap();
    assert_eq!(alert.metric, "acs_operator_token_expiry_timestamp_seconds");
    let scrapes: Vec<(f64, Option<f64>)> = (0..20).map(|t| (t as f64, Some(20.0))).collect();
    // expiry - t < 10 from t = 11; held for 3 s at t = 14.
    assert_eq!(alert.fires_at(&scrapes, 3.0), Some(14.0));
    let counter: Vec<(f64, f64)> = (0..10)
        .map(|t| (t as f64, if t >= 4 { 1.0 } else { 0.0 }))
        .collect();
    assert_eq!(increase_fires_at(&counter, 2.0, 1.0), Some(5.0));
}
