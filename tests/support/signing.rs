//! A small signing client for the emulator tests: it signs exactly as the SDKs do and
//! lets a test break one part of the signature at a time.

use std::time::{Duration, SystemTime};

use acs_identity_operator::acs::connection_string::AccessKey;
use acs_identity_operator::acs::signing::{
    authorization_header, content_hash, signature, string_to_sign,
};
use acs_identity_operator::emulator::{EmulatorConfig, RunningEmulator, spawn};
use reqwest::Method;
use serde_json::Value;

use super::emulator::Admin;

pub const V: &str = "2023-10-01";
pub const PREVIEW: &str = "2025-03-02-preview";
pub const LEGACY: &str = "2020-07-20-preview2";

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
}

/// What to sign, when a test wants the signature to disagree with the request.
#[derive(Clone, Default)]
pub struct Tweak {
    pub key: Option<AccessKey>,
    pub signed_host: Option<String>,
    pub signed_target: Option<String>,
    pub date: Option<SystemTime>,
    pub date_header: Option<&'static str>,
    pub claimed_hash: Option<String>,
    pub no_auth: bool,
    /// Sent as they are, unsigned (repeatability headers, `x-ms-client-request-id`).
    pub headers: Vec<(&'static str, String)>,
}

pub struct Client {
    pub http: reqwest::Client,
    pub endpoint: String,
    pub key: AccessKey,
}

pub async fn start(config: EmulatorConfig) -> (RunningEmulator, Client) {
    let emulator = spawn(config).await.expect("emulator starts");
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(pem) = emulator.ca_pem() {
        http = http.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    let client = Client {
        http: http.build().unwrap(),
        endpoint: emulator.endpoint().to_string(),
        key: emulator.access_key().clone(),
    };
    (emulator, client)
}

impl Client {
    pub async fn call(&self, method: Method, target: &str, body: Option<&str>) -> Reply {
        self.call_tweaked(method, target, body, Tweak::default())
            .await
    }

    pub async fn call_tweaked(
        &self,
        method: Method,
        target: &str,
        body: Option<&str>,
        tweak: Tweak,
    ) -> Reply {
        self.try_call(method, target, body, tweak)
            .await
            .expect("request completes")
    }

    pub async fn try_call(
        &self,
        method: Method,
        target: &str,
        body: Option<&str>,
        tweak: Tweak,
    ) -> Result<Reply, reqwest::Error> {
        let url = format!("{}{}", self.endpoint, target);
        let host = url::Url::parse(&url)
            .map(|u| acs_identity_operator::acs::connection_string::host_with_port(&u))
            .unwrap();
        let bytes = body.unwrap_or("").as_bytes();
        let date = httpdate::fmt_http_date(tweak.date.unwrap_or_else(SystemTime::now));
        let hash = tweak
            .claimed_hash
            .clone()
            .unwrap_or_else(|| content_hash(bytes));
        let date_header = tweak.date_header.unwrap_or("x-ms-date");
        let sts = string_to_sign(
            method.as_str(),
            tweak.signed_target.as_deref().unwrap_or(target),
            &date,
            tweak.signed_host.as_deref().unwrap_or(&host),
            &hash,
        );
        let sig = signature(tweak.key.as_ref().unwrap_or(&self.key), &sts);
        let mut request = self
            .http
            .request(method, &url)
            .header(date_header, &date)
            .header("x-ms-content-sha256", &hash);
        if !tweak.no_auth {
            request = request.header(
                "authorization",
                authorization_header(&format!("{date_header};host;x-ms-content-sha256"), &sig),
            );
        }
        for (name, value) in &tweak.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Reply {
            status,
            headers,
            json,
        })
    }

    pub async fn create_user(&self) -> String {
        let r = self
            .call(Method::POST, &format!("/identities?api-version={V}"), None)
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
        r.json["identity"]["id"].as_str().unwrap().to_string()
    }

    pub async fn issue(&self, id: &str, body: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/identities/{}/:issueAccessToken?api-version={V}", enc(id)),
            Some(body),
        )
        .await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.endpoint, path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        Reply {
            status,
            headers,
            json,
        }
    }

    /// The emulator's typed admin client, over this client's HTTP (TLS trusted).
    pub fn admin_api(&self) -> Admin {
        Admin::with_http(&self.endpoint, self.http.clone())
    }

    pub async fn validate(&self, token: &str) -> (bool, String) {
        self.admin_api().validate(token).await
    }
}

/// Percent-encodes an id for the path, as the SDKs do (`:` becomes `%3A`).
pub fn enc(id: &str) -> String {
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(id, COMPONENT).to_string()
}
