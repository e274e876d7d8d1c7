//! ACS Identity client: connection strings, HMAC request signing, the identity REST
//! operations, retries and client-side quota. No Kubernetes here.
//!
//! The operator shares one [`AcsClient`] per ACS endpoint and key for the whole process
//! (one quota bucket per ACS resource), built from a [`ConnectionString`] and
//! [`AcsClientOptions`]; [`AcsClient::new`] refuses endpoints [`check_endpoint`] refuses.
//! Every operation returns a typed result or an [`AcsError`] that says whether to retry,
//! whether the user is gone (404) and whether ACS may have acted although no answer came
//! back (`is_outcome_unknown`). Which api-versions offer custom ids is an explicit table
//! ([`api_versions`]) that the emulator shares.

pub(crate) mod api_versions;
pub(crate) mod client;
pub mod connection_string;
pub(crate) mod endpoint;
pub mod entra;
pub(crate) mod error;
pub(crate) mod model;
pub(crate) mod quota;
pub(crate) mod retry;
pub mod signing;
pub(crate) mod standing;

pub use api_versions::{DEFAULT_API_VERSION, supports_custom_id};
pub use client::{AcsClient, AcsClientOptions, Attempt, Auth, RequestObserver, WaitReason};
pub use connection_string::{AccessKey, ConnectionString, ConnectionStringError};
pub use endpoint::{EndpointError, check_endpoint};
pub use error::{AcsError, Operation};
pub use model::{AccessToken, CommunicationUser, CreatedUser, Token, TokenScope, UnknownScope};
pub use quota::{QuotaConfig, Rate};
pub use retry::RetryPolicy;
pub use standing::Standing;
