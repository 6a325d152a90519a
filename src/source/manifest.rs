//! Parsing manifest files: multi-document YAML, JSON, `kind: List`, legacy
//! Ingress versions; namespaces defaulted, Secret `stringData` merged.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::legacy;
use crate::cluster::{DEFAULT_NAMESPACE, Object};
use crate::problem::Printable;

/// Why a file could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("document {doc}: {message}")]
    Document { doc: usize, message: String },
}

/// What one file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifests {
    pub objects: Vec<Object>,
    /// Objects of kinds wicket does not read, described for a log line.
    pub ignored: Vec<String>,
}

/// Parses the text of a file; `json` selects the JSON parser.
pub fn parse(text: &str, json: bool) -> Result<Manifests, ManifestError> {
    let docs: Vec<Value> = if json {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
        vec![serde_yaml::to_value(v).map_err(|e| ManifestError::Json(e.to_string()))?]
    } else {
        let mut docs = Vec::new();
        for d in serde_yaml::Deserializer::from_str(text) {
            docs.push(Value::deserialize(d).map_err(|e| ManifestError::Yaml(e.to_string()))?);
        }
        docs
    };
    let mut out = Manifests::default();
    for (i, doc) in docs.into_iter().enumerate() {
        read_value(doc, &mut out).map_err(|message| ManifestError::Document {
            doc: i + 1,
            message,
        })?;
    }
    Ok(out)
}

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn read_value(v: Value, out: &mut Manifests) -> Result<(), String> {
    if v.is_null() {
        return Ok(()); // an empty document, such as after a trailing `---`
    }
    if !v.is_mapping() {
        return Err("expected an object with apiVersion and kind".into());
    }
    let api_version = str_field(&v, "apiVersion")
        .ok_or("apiVersion is missing")?
        .to_string();
    let kind = str_field(&v, "kind").ok_or("kind is missing")?.to_string();
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        let items = match v.get("items") {
            Some(Value::Sequence(items)) => items.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(format!("{kind}: items must be a list")),
        };
        for (i, item) in items.into_iter().enumerate() {
            read_value(item, out).map_err(|e| format!("items[{i}]: {e}"))?;
        }
        return Ok(());
    }
    let mut v = v;
    if kind != "IngressClass" {
        default_namespace(&mut v);
    }
    let object = match (api_version.as_str(), kind.as_str()) {
        ("networking.k8s.io/v1", "Ingress") => {
            Object::Ingress(Arc::new(typed::<Ingress>(v, &kind)?))
        }
        ("networking.k8s.io/v1beta1" | "extensions/v1beta1", "Ingress") => {
            Object::Ingress(Arc::new(legacy::convert(v)?))
        }
        ("networking.k8s.io/v1" | "networking.k8s.io/v1beta1", "IngressClass") => {
            set_api_version(&mut v, "networking.k8s.io/v1");
            Object::IngressClass(Arc::new(typed::<IngressClass>(v, &kind)?))
        }
        ("v1", "Service") => Object::Service(Arc::new(typed::<Service>(v, &kind)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(Arc::new(typed::<EndpointSlice>(v, &kind)?))
        }
        ("v1", "Secret") => Object::Secret(Arc::new(merge_string_data(typed::<Secret>(v, &kind)?))),
        ("v1", "ConfigMap") => Object::ConfigMap(Arc::new(typed::<ConfigMap>(v, &kind)?)),
        _ => {
            let name = v
                .get("metadata")
                .and_then(|m| str_field(m, "name"))
                .unwrap_or("");
            out.ignored.push(format!(
                "{} {} ({})",
                Printable(&kind),
                Printable(name),
                Printable(&api_version)
            ));
            return Ok(());
        }
    };
    out.objects.push(object);
    Ok(())
}

fn set_api_version(v: &mut Value, to: &str) {
    if let Value::Mapping(m) = v {
        m.insert(Value::from("apiVersion"), Value::from(to));
    }
}

fn typed<T: DeserializeOwned>(v: Value, kind: &str) -> Result<T, String> {
    serde_yaml::from_value(v).map_err(|e| format!("not a valid {kind}: {e}"))
}

/// The API server folds `stringData` into `data`; do the same.
fn merge_string_data(mut s: Secret) -> Secret {
    if let Some(sd) = s.string_data.take() {
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in sd {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
    s
}

/// Objects without a namespace are in `default`, as `kubectl apply` puts them.
fn default_namespace(v: &mut Value) {
    let Value::Mapping(m) = v else { return };
    let meta = m
        .entry(Value::from("metadata"))
        .or_insert_with(|| Value::Mapping(Default::default()));
    if let Value::Mapping(meta) = meta {
        let ns = meta.get("namespace");
        if ns.is_none_or(|n| n.is_null() || n.as_str() == Some("")) {
            meta.insert(Value::from("namespace"), Value::from(DEFAULT_NAMESPACE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Kind;

    #[test]
    fn multi_document_yaml_with_defaults() {
        let m = parse(
            r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
---
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: aGVsbG8=}
stringData: {tls.key: world}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
"#,
            false,
        )
        .unwrap();
        assert_eq!(m.objects.len(), 2);
        assert_eq!(m.objects[0].object_ref().key.namespace, "default");
        let Object::Secret(s) = &m.objects[1] else {
            panic!()
        };
        let data = s.data.as_ref().unwrap();
        assert_eq!(data["tls.crt"].0, b"hello");
        assert_eq!(data["tls.key"].0, b"world");
        assert!(s.string_data.is_none());
        assert_eq!(m.ignored, vec!["Deployment web (apps/v1)"]);
    }

    #[test]
    fn json_and_lists() {
        let m = parse(
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}},
                {"apiVersion":"networking.k8s.io/v1","kind":"IngressClass","metadata":{"name":"wicket"},
                 "spec":{"controller":"wicket.dev/ingress-controller"}}]}"#,
            true,
        )
        .unwrap();
        let kinds: Vec<Kind> = m.objects.iter().map(Object::kind).collect();
        assert_eq!(kinds, vec![Kind::ConfigMap, Kind::IngressClass]);
        assert_eq!(m.objects[1].object_ref().key.namespace, "");
    }

    #[test]
    fn errors_name_the_document() {
        let e = parse("apiVersion: v1\nkind: Service\n---\nkind: [", false).unwrap_err();
        assert!(matches!(e, ManifestError::Yaml(_)), "{e}");
        let e = parse("apiVersion: v1\nkind: Service\nspec: 5\n", false).unwrap_err();
        assert!(
            e.to_string().starts_with("document 1: not a valid Service"),
            "{e}"
        );
        let e = parse("- a\n- b\n", false).unwrap_err();
        assert!(e.to_string().contains("apiVersion"), "{e}");
    }
}
