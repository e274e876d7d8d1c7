//! What can go wrong, as one line a person can act on. API errors are classified with
//! the operation that failed (verb, resource, namespace, name), so a 403 names the RBAC
//! that is missing and a 404 tells a missing object from a missing CRD.

use kube::core::Status;

use crate::api::GROUP;

/// The resources the CLI touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Identity,
    Secret,
}

impl Resource {
    /// Lower-case kind, as kubectl prints it in "not found" errors.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Identity => "communicationidentity",
            Resource::Secret => "secret",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Resource::Identity => "communicationidentities",
            Resource::Secret => "secrets",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Resource::Identity => GROUP,
            Resource::Secret => "",
        }
    }

    /// `communicationidentities.acs-operator.dev`, `secrets`.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }
}

/// An API call, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Op<'a> {
    pub verb: &'static str,
    pub resource: Resource,
    /// `None` for a list across all namespaces.
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{kind} {name:?} not found in namespace {namespace:?}{hint}")]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
        /// Appended as is (starts with `; ` when present).
        hint: String,
    },
    #[error(
        "forbidden: {who} cannot {verb} {qualified}{scope}; the user needs RBAC for it: a {role} \
         granting verb {verb:?} on resource {plural:?} in API group {group:?}, bound to that user",
        qualified = resource.qualified(),
        scope = namespace.as_ref().map_or_else(|| " in any namespace".to_string(), |ns| format!(" in namespace {ns:?}")),
        role = if namespace.is_some() { "Role (or ClusterRole)" } else { "ClusterRole" },
        plural = resource.plural(),
        group = resource.group(),
    )]
    Forbidden {
        /// `User "..."` or `the current user`.
        who: String,
        verb: &'static str,
        resource: Resource,
        /// `None` for a request across all namespaces.
        namespace: Option<String>,
    },
    #[error(
        "the CommunicationIdentity resource type ({resource}/v1alpha1) is not installed in this \
         cluster; install the CRDs first: kubectl apply --server-side -f crds/ (or install the \
         acs-identity-operator Helm chart)",
        resource = Resource::Identity.qualified()
    )]
    CrdNotInstalled,
    #[error(
        "cannot reach the Kubernetes API server {server}: {detail}; check KUBECONFIG, --kubeconfig \
         and --context"
    )]
    Unreachable { server: String, detail: String },
    #[error(
        "the API server at {server} rejected the credentials of the current context \
         (401 Unauthorized); log in again or refresh the kubeconfig"
    )]
    Unauthorized { server: String },
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("cannot {verb} {resource}{target}: {message}")]
    Api {
        verb: &'static str,
        resource: String,
        target: String,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Other(format!("writing output: {e}"))
    }
}

/// `e` and its sources, joined by `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// Turns a failed API call into the message a person sees.
pub fn classify(err: kube::Error, op: Op<'_>, server: &str) -> CliError {
    match err {
        kube::Error::Api(status) => classify_status(&status, op, server),
        kube::Error::HyperError(_) | kube::Error::Service(_) => CliError::Unreachable {
            server: server.to_string(),
            detail: chain(&err),
        },
        other => CliError::Other(format!(
            "cannot {} {}: {}",
            op.verb,
            op.resource.qualified(),
            chain(&other)
        )),
    }
}

fn classify_status(status: &Status, op: Op<'_>, server: &str) -> CliError {
    let named = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
    match status.code {
        403 => CliError::Forbidden {
            who: user_in_message(&status.message)
                .map_or_else(|| "the current user".to_string(), |u| format!("User {u:?}")),
            verb: op.verb,
            resource: op.resource,
            namespace: op.namespace.map(str::to_string),
        },
        401 => CliError::Unauthorized {
            server: server.to_string(),
        },
        // A missing object comes with details naming it; a missing resource type (the
        // CRD) is a bare 404 ("404 page not found" or "could not find the requested
        // resource").
        404 if op.resource == Resource::Identity && !named => CliError::CrdNotInstalled,
        404 => CliError::NotFound {
            kind: op.resource.kind(),
            name: op.name.unwrap_or_default().to_string(),
            namespace: op.namespace.unwrap_or_default().to_string(),
            hint: String::new(),
        },
        _ => CliError::Api {
            verb: op.verb,
            resource: op.resource.qualified(),
            target: match (op.name, op.namespace) {
                (Some(n), Some(ns)) => format!(" {n:?} in namespace {ns:?}"),
                (None, Some(ns)) => format!(" in namespace {ns:?}"),
                _ => String::new(),
            },
            message: if status.message.is_empty() {
                format!("HTTP {}", status.code)
            } else {
                status.message.clone()
            },
        },
    }
}

/// The user in an apiserver message such as `... User "system:serviceaccount:a:b" cannot
/// list resource ...`.
fn user_in_message(message: &str) -> Option<&str> {
    let rest = message.split_once("User \"")?.1;
    rest.split_once('"').map(|(user, _)| user)
}

#[cfg(test)]
mod tests {
    use kube::core::response::StatusDetails;

    use super::*;

    fn op(verb: &'static str, resource: Resource, name: Option<&'static str>) -> Op<'static> {
        Op {
            verb,
            resource,
            namespace: Some("team-a"),
            name,
        }
    }

    fn api(status: Status) -> kube::Error {
        kube::Error::Api(status.boxed())
    }

    #[test]
    fn forbidden_names_the_verb_resource_and_rbac() {
        let err = api(Status::failure(
            "communicationidentities.acs-operator.dev is forbidden: User \"system:serviceaccount:team-a:nobody\" cannot list resource \"communicationidentities\" in API group \"acs-operator.dev\" in the namespace \"team-a\"",
            "Forbidden",
        )
        .with_code(403));
        let msg = classify(err, op("list", Resource::Identity, None), "https://x").to_string();
        assert_eq!(
            msg,
            "forbidden: User \"system:serviceaccount:team-a:nobody\" cannot list \
             communicationidentities.acs-operator.dev in namespace \"team-a\"; the user needs \
             RBAC for it: a Role (or ClusterRole) granting verb \"list\" on resource \
             \"communicationidentities\" in API group \"acs-operator.dev\", bound to that user"
        );
        let err = api(Status::failure("forbidden", "Forbidden").with_code(403));
        let all = Op {
            namespace: None,
            ..op("get", Resource::Secret, Some("app"))
        };
        let msg = classify(err, all, "https://x").to_string();
        assert!(msg.starts_with("forbidden: the current user cannot get secrets in any namespace"));
        assert!(msg.contains(
            "a ClusterRole granting verb \"get\" on resource \"secrets\" in API group \"\""
        ));
    }

    #[test]
    fn not_found_tells_object_from_crd() {
        let named = Status::failure("x not found", "NotFound")
            .with_code(404)
            .with_details(
                serde_json::from_value::<StatusDetails>(serde_json::json!({
                    "name": "x", "group": GROUP, "kind": "communicationidentities"
                }))
                .expect("details"),
            );
        assert_eq!(
            classify(api(named), op("get", Resource::Identity, Some("x")), "s").to_string(),
            "communicationidentity \"x\" not found in namespace \"team-a\""
        );
        let bare =
            Status::failure("404 page not found", "Failed to parse error data").with_code(404);
        let msg = classify(api(bare), op("list", Resource::Identity, None), "s").to_string();
        assert!(msg.contains("is not installed in this cluster; install the CRDs first: kubectl apply --server-side -f crds/"), "{msg}");
        let bare = Status::failure("not found", "NotFound").with_code(404);
        assert_eq!(
            classify(api(bare), op("get", Resource::Secret, Some("s1")), "s").to_string(),
            "secret \"s1\" not found in namespace \"team-a\""
        );
    }

    #[test]
    fn other_statuses_keep_the_server_message() {
        let err = api(Status::failure("etcd is sad", "InternalError").with_code(500));
        assert_eq!(
            classify(err, op("patch", Resource::Identity, Some("app")), "s").to_string(),
            "cannot patch communicationidentities.acs-operator.dev \"app\" in namespace \"team-a\": etcd is sad"
        );
        let err = api(Status::failure("Unauthorized", "Unauthorized").with_code(401));
        assert!(
            classify(err, op("get", Resource::Identity, Some("a")), "https://h:1")
                .to_string()
                .contains("https://h:1 rejected the credentials")
        );
    }
}
