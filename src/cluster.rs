//! The snapshot of everything wicket observes, as plain k8s-openapi objects.
//!
//! Both sources (a folder of manifests, the Kubernetes API) produce a
//! [`Cluster`]; nothing downstream knows which one did. Maps are ordered so
//! that everything derived from a snapshot is deterministic.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// Namespace given to objects that do not name one, as `kubectl apply` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Namespace and name of a namespaced object. The strings are exactly what the
/// object said; they are validated where they are used.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            crate::problem::Printable(&self.namespace),
            crate::problem::Printable(&self.name)
        )
    }
}

/// The kinds of object wicket reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub enum Kind {
    Ingress,
    IngressClass,
    Service,
    EndpointSlice,
    Secret,
    ConfigMap,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference to one object: its kind, namespace (empty for cluster-scoped
/// kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub key: ObjectKey,
}

impl ObjectRef {
    pub fn new(kind: Kind, key: ObjectKey) -> Self {
        ObjectRef { kind, key }
    }
    pub fn cluster_scoped(kind: Kind, name: impl Into<String>) -> Self {
        ObjectRef {
            kind,
            key: ObjectKey::new("", name),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.as_str().to_ascii_lowercase();
        if self.key.namespace.is_empty() {
            write!(f, "{kind} {}", crate::problem::Printable(&self.key.name))
        } else {
            write!(f, "{kind} {}", self.key)
        }
    }
}

/// Everything observed at one moment. Objects are shared (`Arc`), so a
/// snapshot is cheap to take from a source's cache.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub ingresses: BTreeMap<ObjectKey, Arc<Ingress>>,
    /// IngressClass is cluster-scoped: keyed by name.
    pub ingress_classes: BTreeMap<String, Arc<IngressClass>>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub secrets: BTreeMap<ObjectKey, Arc<Secret>>,
    pub config_maps: BTreeMap<ObjectKey, Arc<ConfigMap>>,
}

/// One object of any kind wicket reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Ingress(Arc<Ingress>),
    IngressClass(Arc<IngressClass>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Secret(Arc<Secret>),
    ConfigMap(Arc<ConfigMap>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Ingress(_) => Kind::Ingress,
            Object::IngressClass(_) => Kind::IngressClass,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Secret(_) => Kind::Secret,
            Object::ConfigMap(_) => Kind::ConfigMap,
        }
    }

    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Ingress(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
        }
    }

    /// Kind, namespace and name; the namespace is empty for IngressClass.
    pub fn object_ref(&self) -> ObjectRef {
        let meta = self.meta();
        let name = meta.name.clone().unwrap_or_default();
        if self.kind() == Kind::IngressClass {
            ObjectRef::cluster_scoped(Kind::IngressClass, name)
        } else {
            let ns = meta
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
            ObjectRef::new(self.kind(), ObjectKey::new(ns, name))
        }
    }
}

impl Cluster {
    /// Adds an object, replacing one of the same kind, namespace and name.
    /// Returns the object it replaced, if any.
    pub fn insert(&mut self, object: Object) -> Option<Object> {
        let r = object.object_ref();
        match object {
            Object::Ingress(o) => self.ingresses.insert(r.key, o).map(Object::Ingress),
            Object::IngressClass(o) => self
                .ingress_classes
                .insert(r.key.name, o)
                .map(Object::IngressClass),
            Object::Service(o) => self.services.insert(r.key, o).map(Object::Service),
            Object::EndpointSlice(o) => self
                .endpoint_slices
                .insert(r.key, o)
                .map(Object::EndpointSlice),
            Object::Secret(o) => self.secrets.insert(r.key, o).map(Object::Secret),
            Object::ConfigMap(o) => self.config_maps.insert(r.key, o).map(Object::ConfigMap),
        }
    }

    /// Adds an object unless one of the same kind, namespace and name is
    /// present; returns whether it was added.
    pub fn insert_new(&mut self, object: Object) -> bool {
        use std::collections::btree_map::Entry;
        fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, v: V) -> bool {
            match map.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(v);
                    true
                }
                Entry::Occupied(_) => false,
            }
        }
        let r = object.object_ref();
        match object {
            Object::Ingress(o) => put(&mut self.ingresses, r.key, o),
            Object::IngressClass(o) => put(&mut self.ingress_classes, r.key.name, o),
            Object::Service(o) => put(&mut self.services, r.key, o),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, r.key, o),
            Object::Secret(o) => put(&mut self.secrets, r.key, o),
            Object::ConfigMap(o) => put(&mut self.config_maps, r.key, o),
        }
    }

    /// Whether an object of this kind, namespace and name is present.
    pub fn contains(&self, r: &ObjectRef) -> bool {
        match r.kind {
            Kind::Ingress => self.ingresses.contains_key(&r.key),
            Kind::IngressClass => self.ingress_classes.contains_key(&r.key.name),
            Kind::Service => self.services.contains_key(&r.key),
            Kind::EndpointSlice => self.endpoint_slices.contains_key(&r.key),
            Kind::Secret => self.secrets.contains_key(&r.key),
            Kind::ConfigMap => self.config_maps.contains_key(&r.key),
        }
    }

    /// Number of objects of each kind, in a fixed order.
    pub fn counts(&self) -> [(Kind, usize); 6] {
        [
            (Kind::Ingress, self.ingresses.len()),
            (Kind::IngressClass, self.ingress_classes.len()),
            (Kind::Service, self.services.len()),
            (Kind::EndpointSlice, self.endpoint_slices.len()),
            (Kind::Secret, self.secrets.len()),
            (Kind::ConfigMap, self.config_maps.len()),
        ]
    }
}
