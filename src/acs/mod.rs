//! ACS Identity client: connection strings, HMAC request signing, the identity REST
//! operations, retries and client-side quota. No Kubernetes here.

pub mod connection_string;
pub mod signing;
