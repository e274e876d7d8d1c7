//! Checks on the generated CRDs: the enums, defaults and CEL rules that admission relies
//! on, and the structural-schema rules the apiserver enforces when the CRD is created.

use serde_json::{Value, json};

use super::*;

fn crd_json(name: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no CRD {name}"));
    serde_json::to_value(crd).expect("CRD serializes")
}

fn schema(name: &str) -> Value {
    crd_json(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn rules(node: &Value) -> Vec<Value> {
    node["x-kubernetes-validations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn rule_with<'a>(rules: &'a [Value], needle: &str) -> &'a Value {
    rules
        .iter()
        .find(|r| r["rule"].as_str().is_some_and(|s| s.contains(needle)))
        .unwrap_or_else(|| panic!("no rule containing {needle:?} in {rules:#?}"))
}

const IDENTITY: &str = "communicationidentities.acs-operator.dev";
const SERVICE: &str = "communicationservices.acs-operator.dev";
const CLUSTER_SERVICE: &str = "clustercommunicationservices.acs-operator.dev";

/// Issue 18: v1beta1 is served beside v1alpha1 with exactly its schema (so no conversion
/// webhook is needed), and v1alpha1 stays the storage version.
#[test]
fn v1beta1_is_served_with_the_storage_versions_schema() {
    for name in [IDENTITY, SERVICE, CLUSTER_SERVICE] {
        let crd = crd_json(name);
        let versions = crd["spec"]["versions"].as_array().expect("versions");
        let names: Vec<&str> = versions.iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(names, SERVED_VERSIONS, "{name}");
        let (alpha, beta) = (&versions[0], &versions[1]);
        assert_eq!(
            (alpha["served"].clone(), alpha["storage"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(
            (beta["served"].clone(), beta["storage"].clone()),
            (json!(true), json!(false))
        );
        let strip = |v: &Value| {
            let mut v = v.clone();
            let o = v.as_object_mut().expect("version");
            o.remove("name");
            o.remove("storage");
            v
        };
        assert_eq!(strip(alpha), strip(beta), "{name}: the schemas differ");
        assert!(
            crd["spec"]
                .get("conversion")
                .is_none_or(|c| c["strategy"] == "None")
        );
    }
}

#[test]
fn names_scopes_and_subresources() {
    let id = crd_json(IDENTITY);
    assert_eq!(id["spec"]["group"], GROUP);
    assert_eq!(id["spec"]["scope"], "Namespaced");
    assert_eq!(id["spec"]["names"]["shortNames"], json!(["acsid"]));
    assert_eq!(id["spec"]["versions"][0]["name"], VERSION);
    let columns: Vec<&str> = id["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Ready", "User", "Expires", "Age"]);
    assert_eq!(crd_json(SERVICE)["spec"]["scope"], "Namespaced");
    assert_eq!(crd_json(CLUSTER_SERVICE)["spec"]["scope"], "Cluster");
    for name in [IDENTITY, SERVICE, CLUSTER_SERVICE] {
        let crd = crd_json(name);
        assert_eq!(
            crd["spec"]["versions"][0]["subresources"]["status"],
            json!({})
        );
        assert_eq!(crd["spec"]["versions"][0]["storage"], true);
    }
}

#[test]
fn identity_spec_enums_and_defaults() {
    let spec = &schema(IDENTITY)["properties"]["spec"];
    let p = &spec["properties"];
    assert_eq!(spec["required"], json!(["scopes"]));
    assert_eq!(
        p["scopes"]["items"]["enum"],
        json!([
            "chat",
            "voip",
            "chat.join",
            "chat.join.limited",
            "voip.join"
        ])
    );
    assert_eq!(p["scopes"]["minItems"], 1);
    assert_eq!(p["scopes"]["x-kubernetes-list-type"], "set");
    assert_eq!(p["tokenLifetime"]["default"], "24h");
    assert_eq!(p["tokenLifetime"]["pattern"], duration::DURATION_PATTERN);
    assert_eq!(p["renewBefore"]["pattern"], duration::DURATION_PATTERN);
    assert!(
        p["renewBefore"].get("default").is_none(),
        "resolved in code"
    );
    assert_eq!(p["deletionPolicy"]["enum"], json!(["Delete", "Retain"]));
    assert!(
        p["deletionPolicy"].get("default").is_none(),
        "depends on adoption"
    );
    assert_eq!(
        p["serviceRef"]["properties"]["kind"]["enum"],
        json!(["CommunicationService", "ClusterCommunicationService"])
    );
    assert_eq!(
        p["serviceRef"]["properties"]["kind"]["default"],
        "CommunicationService"
    );
    assert_eq!(p["serviceRef"]["required"], json!(["name"]));
}

#[test]
fn identity_cel_rules() {
    let root = schema(IDENTITY);
    let spec = &root["properties"]["spec"];

    let lifetime = rules(&spec["properties"]["tokenLifetime"]);
    let r = rule_with(&lifetime, "duration(self)");
    assert!(
        r["rule"]
            .as_str()
            .is_some_and(|s| s.contains("duration('1h')") && s.contains("duration('24h')"))
    );
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("between 60m and 24h"))
    );

    let renew = rules(&spec["properties"]["renewBefore"]);
    assert!(rule_with(&renew, "duration('5m')")["message"].is_string());

    let spec_rules = rules(spec);
    let shorter = rule_with(
        &spec_rules,
        "duration(self.renewBefore) < duration(self.tokenLifetime)",
    );
    assert_eq!(shorter["fieldPath"], ".renewBefore");
    assert!(
        shorter["message"]
            .as_str()
            .is_some_and(|m| m.contains("shorter than tokenLifetime"))
    );

    let adopt = rule_with(&spec_rules, "oldSelf.existingUserId");
    assert_eq!(adopt["fieldPath"], ".existingUserId");
    assert_eq!(adopt["reason"], "FieldValueForbidden");
    assert!(
        adopt["message"]
            .as_str()
            .is_some_and(|m| m.contains("immutable"))
    );

    let floor = rule_with(
        &spec_rules,
        "duration(self.tokenLifetime) - duration(self.renewBefore) >= duration('15s')",
    );
    assert_eq!(floor["fieldPath"], ".renewBefore");
    assert!(
        floor["message"]
            .as_str()
            .is_some_and(|m| m.contains("at least 15s between renewals"))
    );

    let service = rule_with(&spec_rules, "oldSelf.serviceRef");
    assert_eq!(service["fieldPath"], ".serviceRef");
    assert_eq!(service["reason"], "FieldValueForbidden");
    let service_rule = service["rule"].as_str().unwrap_or_default();
    assert!(
        service_rule.contains("has(self.serviceRef) == has(oldSelf.serviceRef)"),
        "adding or removing serviceRef is a change too: {service_rule}"
    );
    assert!(
        service["message"]
            .as_str()
            .is_some_and(|m| m.contains("serviceRef is immutable")
                && m.contains("create a new CommunicationIdentity"))
    );

    let root_rules = rules(&root);
    let name = rule_with(&root_rules, "size(self.metadata.name) <= 63");
    assert!(
        name["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 63 characters") && m.contains("label"))
    );
    assert_eq!(identity::MAX_IDENTITY_NAME_LENGTH, 63);

    let secret = rule_with(&root_rules, "oldSelf.spec.secretName");
    assert!(
        secret["rule"]
            .as_str()
            .is_some_and(|s| s.contains("self.metadata.name"))
    );
    assert_eq!(secret["fieldPath"], ".spec.secretName");
    assert!(
        secret["message"]
            .as_str()
            .is_some_and(|m| m.contains("immutable"))
    );
}

#[test]
fn every_cel_rule_has_a_message_and_bounded_inputs() {
    // Rules over unbounded strings blow the apiserver's CEL cost estimate; a rule without
    // a message shows users the raw expression.
    for name in [IDENTITY, SERVICE, CLUSTER_SERVICE] {
        walk(&schema(name), "", &mut |path, node| {
            for r in rules(node) {
                assert!(
                    r["message"].is_string(),
                    "{name} {path}: rule without message: {r}"
                );
                assert!(!r["message"].as_str().unwrap_or("\n").contains('\n'));
            }
            if node.get("x-kubernetes-validations").is_some() && node["type"] == "string" {
                assert!(
                    node["maxLength"].is_u64(),
                    "{name} {path}: CEL on unbounded string"
                );
            }
        });
    }
}

#[test]
fn service_defaults() {
    for name in [SERVICE, CLUSTER_SERVICE] {
        let p = &schema(name)["properties"]["spec"]["properties"];
        assert_eq!(p["apiVersion"]["default"], "2023-10-01");
        assert_eq!(
            p["connectionStringSecretRef"]["properties"]["key"]["default"],
            "connectionString"
        );
        assert_eq!(
            p["quota"]["default"],
            json!({"window": "30s", "creates": 1000, "issues": 1000, "deletes": 500, "revokes": 500})
        );
        for f in ["creates", "issues", "deletes", "revokes"] {
            assert_eq!(p["quota"]["properties"][f]["minimum"], 1.0);
            assert_eq!(p["quota"]["properties"][f]["format"], "int32");
        }
    }
    for name in [SERVICE, CLUSTER_SERVICE] {
        let adoption = &schema(name)["properties"]["spec"]["properties"]["allowAdoption"];
        assert_eq!(adoption["type"], "boolean", "{name}");
        // The default differs by kind and is resolved in code (`allows_adoption`).
        assert!(adoption.get("default").is_none(), "{name}");
    }
    let cluster = &schema(CLUSTER_SERVICE)["properties"]["spec"]["properties"];
    assert_eq!(
        cluster["connectionStringSecretRef"]["required"],
        json!(["name", "namespace"])
    );
    assert_eq!(cluster["namespaceSelector"]["type"], "object");
    assert!(
        cluster["namespaceSelector"].get("default").is_none(),
        "absent selects none"
    );
    let ns = &schema(SERVICE)["properties"]["spec"]["properties"];
    assert!(
        ns["connectionStringSecretRef"]["properties"]
            .get("namespace")
            .is_none()
    );
}

#[test]
fn services_take_exactly_one_credential_and_entra_is_https_only() {
    for name in [SERVICE, CLUSTER_SERVICE] {
        let spec = &schema(name)["properties"]["spec"];
        assert!(
            spec.get("required").is_none(),
            "{name}: no field is required alone"
        );
        let r = rules(spec);
        rule_with(
            &r,
            "has(self.connectionStringSecretRef) != has(self.entraId)",
        );
        rule_with(&r, "has(self.entraId) == has(self.endpoint)");
        let p = &spec["properties"];
        rule_with(&rules(&p["endpoint"]), "startsWith('https://')");
        rule_with(
            &rules(&p["entraId"]["properties"]["authorityHost"]),
            "startsWith('https://')",
        );
        assert_eq!(
            schema(name)["properties"]["status"]["properties"]["authentication"]["properties"]["method"]
                ["enum"],
            json!(["ConnectionString", "WorkloadIdentity", "Ambient"])
        );
    }
    let ns = &schema(SERVICE)["properties"]["spec"]["properties"]["entraId"]["properties"];
    assert!(
        ns["serviceAccountRef"]["properties"]
            .get("namespace")
            .is_none(),
        "a namespaced service names only its own namespace's ServiceAccounts"
    );
    let cluster =
        &schema(CLUSTER_SERVICE)["properties"]["spec"]["properties"]["entraId"]["properties"];
    assert_eq!(
        cluster["serviceAccountRef"]["required"],
        json!(["name", "namespace"])
    );
}

#[test]
fn identity_status_records_the_user_endpoint() {
    let status = &schema(IDENTITY)["properties"]["status"]["properties"];
    assert_eq!(status["userEndpoint"]["type"], "string");
}

#[test]
fn conditions_are_a_map_keyed_by_type() {
    for name in [IDENTITY, SERVICE, CLUSTER_SERVICE] {
        let c = &schema(name)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(c["x-kubernetes-list-type"], "map", "{name}");
        assert_eq!(c["x-kubernetes-list-map-keys"], json!(["type"]), "{name}");
        let required = c["items"]["required"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            required.contains(&json!("type")),
            "map keys must be required"
        );
    }
}

/// The structural-schema rules of apiextensions v1 that schemars output can break:
/// every node has a `type` (or is int-or-string / preserve-unknown), no `oneOf`/`anyOf`/
/// `allOf`/`not` carrying types, no `$ref`, no `nullable` (see `strip_nullable`), no
/// `uniqueItems: true`, no `additionalProperties` next to `properties`, list-type map keys
/// required, and defaults of the declared type.
#[test]
fn schemas_are_structural() {
    for name in [IDENTITY, SERVICE, CLUSTER_SERVICE] {
        walk(&schema(name), "", &mut |path, node| {
            let Some(obj) = node.as_object() else {
                panic!("{name} {path}: schema is not an object");
            };
            for forbidden in [
                "oneOf",
                "anyOf",
                "allOf",
                "not",
                "$ref",
                "nullable",
                "uniqueItems",
                "definitions",
                "$defs",
            ] {
                assert!(
                    !obj.contains_key(forbidden),
                    "{name} {path}: has {forbidden}"
                );
            }
            let special = obj.contains_key("x-kubernetes-int-or-string")
                || obj.contains_key("x-kubernetes-preserve-unknown-fields");
            assert!(
                obj.contains_key("type") || special,
                "{name} {path}: no type"
            );
            if obj.contains_key("properties") {
                assert!(!obj.contains_key("additionalProperties"), "{name} {path}");
            }
            if let Some(default) = obj.get("default") {
                let ok = match obj["type"].as_str() {
                    Some("string") => default.is_string(),
                    Some("integer") => default.is_i64() || default.is_u64(),
                    Some("object") => default.is_object(),
                    Some("array") => default.is_array(),
                    Some("boolean") => default.is_boolean(),
                    _ => true,
                };
                assert!(ok, "{name} {path}: default {default} does not match type");
                if let Some(values) = obj.get("enum").and_then(Value::as_array) {
                    assert!(
                        values.contains(default),
                        "{name} {path}: default not in enum"
                    );
                }
            }
        });
    }
}

#[test]
fn yaml_round_trips_and_quotes_dates() {
    for crd in crds() {
        let yaml = crd_yaml(&crd).expect("serializes");
        let back: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(&yaml).expect("parses back");
        assert_eq!(back, crd);
        assert!(
            !yaml.contains("default: 2023-10-01"),
            "unquoted date in {}",
            crd_file_name(&crd)
        );
    }
}

/// Visits every schema node with a JSON-pointer-like path.
fn walk(node: &Value, path: &str, f: &mut dyn FnMut(&str, &Value)) {
    f(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(v, &format!("{path}.{k}"), f);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, &format!("{path}[]"), f);
    }
    if let Some(ap) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(ap, &format!("{path}{{}}"), f);
    }
}
