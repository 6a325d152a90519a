//! Parsing manifest files: multi-document YAML, JSON, `kind: List`, legacy
//! Ingress versions; namespaces defaulted, Secret `stringData` merged.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};
use serde_json::Value;

use super::legacy;
use crate::cluster::{DEFAULT_NAMESPACE, Object};
use crate::problem::{Printable, Quoted};

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
///
/// Most YAML is read by a fast reader for the plain subset manifests are
/// written in; what it declines, serde_yaml reads. Documents are read into
/// JSON values, which are much cheaper to build than YAML ones (whose keys may be any value and are hashed). A YAML key
/// that is not a string is read as its text, as the API server's YAML
/// decoder does; a key given twice in one map is an error, as there.
pub fn parse(text: &str, json: bool) -> Result<Manifests, ManifestError> {
    let docs: Vec<Value> = if json {
        let mut de = serde_json::Deserializer::from_str(text);
        let doc = Strict
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| ManifestError::Json(e.to_string()))?;
        vec![doc]
    } else if let Some(docs) = super::yaml_fast::documents(text) {
        docs
    } else {
        yaml_documents(text).map_err(ManifestError::Yaml)?
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

/// The documents of a YAML text, read by serde_yaml (libyaml): the
/// reference for the fast reader, and what reads what it declines.
pub(super) fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Strict.deserialize(d).map_err(|e| e.to_string()))
        .collect()
}

/// Reads any document into a JSON value, refusing a key given twice in
/// one map (serde_json's own reader keeps the last silently).
#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML or JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate entry with key {}",
                    Quoted(&key)
                )));
            }
            let v = map.next_value_seed(self)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn read_value(v: Value, out: &mut Manifests) -> Result<(), String> {
    if v.is_null() {
        return Ok(()); // an empty document, such as after a trailing `---`
    }
    if !v.is_object() {
        return Err("expected an object with apiVersion and kind".into());
    }
    let api_version = str_field(&v, "apiVersion")
        .ok_or("apiVersion is missing")?
        .to_string();
    let kind = str_field(&v, "kind").ok_or("kind is missing")?.to_string();
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        let mut v = v;
        let items = match v.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
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
    if let Value::Object(m) = v {
        m.insert("apiVersion".into(), Value::from(to));
    }
}

fn typed<T: DeserializeOwned>(v: Value, kind: &str) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("not a valid {kind}: {e}"))
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
    let Value::Object(m) = v else { return };
    let meta = m
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(meta) = meta {
        let ns = meta.get("namespace");
        if ns.is_none_or(|n| n.is_null() || n.as_str() == Some("")) {
            meta.insert("namespace".into(), Value::from(DEFAULT_NAMESPACE));
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

    #[test]
    fn keys_that_look_like_numbers_are_read_as_text() {
        let m = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {80: x, true: y, 1.5: z}\n",
            false,
        )
        .unwrap();
        let Object::ConfigMap(c) = &m.objects[0] else {
            panic!()
        };
        let keys: Vec<&str> = c
            .data
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, vec!["1.5", "80", "true"]);
    }

    #[test]
    fn a_key_given_twice_is_an_error() {
        let e = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, annotations: {a: x, a: y}}\n",
            false,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "not valid YAML: metadata.annotations: duplicate entry with key \"a\" at line 3 column 34"
        );
        let e = parse(
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"kind":"Secret"}"#,
            true,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("duplicate entry with key \"kind\""),
            "{e}"
        );
        // A JSON file holds one document.
        let e = parse(r#"{"apiVersion":"v1"} {}"#, true).unwrap_err();
        assert!(e.to_string().contains("trailing characters"), "{e}");
    }
}
