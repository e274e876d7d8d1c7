//! ACS Identity client: connection strings, HMAC request signing, the identity REST
//! operations, retries and client-side quota. No Kubernetes here.
//!
//! The operator builds one [`AcsClient`] per service and credential version from a
//! [`ConnectionString`] and [`AcsClientOptions`]; every operation returns a typed result or
//! an [`AcsError`] that says whether to retry and whether the user is gone (404).

pub mod client;
pub mod connection_string;
pub mod error;
pub mod model;
pub mod quota;
pub mod retry;
pub mod signing;

pub use client::{
    AcsClient, AcsClientOptions, Attempt, CUSTOM_ID_API_VERSION, DEFAULT_API_VERSION,
    RequestObserver, supports_custom_id,
};
pub use connection_string::{AccessKey, ConnectionString, ConnectionStringError};
pub use error::{AcsError, Operation};
pub use model::{AccessToken, CommunicationUser, CreatedUser, Scope, Token, UnknownScope};
pub use quota::{QuotaConfig, Rate};
pub use retry::RetryPolicy;
