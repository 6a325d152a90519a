//! `extensions/v1beta1` and `networking.k8s.io/v1beta1` Ingresses, converted
//! to `networking.k8s.io/v1` the way the API server converts them:
//! `serviceName`/`servicePort` become `service.name` and `service.port.number`
//! or `.name`, `backend` becomes `defaultBackend`, a missing `pathType` is
//! `ImplementationSpecific`.

use k8s_openapi::api::core::v1::TypedLocalObjectReference;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyIngress {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Option<LegacySpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LegacySpec {
    backend: Option<LegacyBackend>,
    ingress_class_name: Option<String>,
    rules: Option<Vec<LegacyRule>>,
    tls: Option<Vec<IngressTLS>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LegacyRule {
    host: Option<String>,
    http: Option<LegacyHttp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LegacyHttp {
    paths: Vec<LegacyPath>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LegacyPath {
    path: Option<String>,
    path_type: Option<String>,
    backend: LegacyBackend,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LegacyBackend {
    service_name: Option<String>,
    service_port: Option<IntOrString>,
    resource: Option<TypedLocalObjectReference>,
}

impl LegacyBackend {
    fn convert(self) -> IngressBackend {
        let service = self.service_name.map(|name| IngressServiceBackend {
            name,
            port: self.service_port.map(|p| match p {
                IntOrString::Int(n) => ServiceBackendPort {
                    number: Some(n),
                    name: None,
                },
                IntOrString::String(s) => ServiceBackendPort {
                    number: None,
                    name: Some(s),
                },
            }),
        });
        IngressBackend {
            service,
            resource: self.resource,
        }
    }
}

/// Converts a legacy Ingress document.
pub fn convert(v: serde_json::Value) -> Result<Ingress, String> {
    let l: LegacyIngress =
        serde_json::from_value(v).map_err(|e| format!("not a valid v1beta1 Ingress: {e}"))?;
    let spec = l.spec.map(|s| IngressSpec {
        default_backend: s.backend.map(LegacyBackend::convert),
        ingress_class_name: s.ingress_class_name,
        tls: s.tls,
        rules: s.rules.map(|rules| {
            rules
                .into_iter()
                .map(|r| IngressRule {
                    host: r.host,
                    http: r.http.map(|h| HTTPIngressRuleValue {
                        paths: h
                            .paths
                            .into_iter()
                            .map(|p| HTTPIngressPath {
                                path: p.path,
                                path_type: p
                                    .path_type
                                    .unwrap_or_else(|| "ImplementationSpecific".into()),
                                backend: p.backend.convert(),
                            })
                            .collect(),
                    }),
                })
                .collect()
        }),
    });
    Ok(Ingress {
        metadata: l.metadata,
        spec,
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_the_classic_example() {
        let v: serde_json::Value = serde_yaml::from_str(
            r#"
apiVersion: extensions/v1beta1
kind: Ingress
metadata:
  name: test-ingress
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  backend: {serviceName: fallback, servicePort: http}
  rules:
  - http:
      paths:
      - path: /testpath
        backend:
          serviceName: test
          servicePort: 80
"#,
        )
        .unwrap();
        let ing = convert(v).unwrap();
        let spec = ing.spec.unwrap();
        let db = spec.default_backend.unwrap().service.unwrap();
        assert_eq!(db.name, "fallback");
        assert_eq!(db.port.unwrap().name.as_deref(), Some("http"));
        let rules = spec.rules.unwrap();
        let path = &rules[0].http.as_ref().unwrap().paths[0];
        assert_eq!(path.path.as_deref(), Some("/testpath"));
        assert_eq!(path.path_type, "ImplementationSpecific");
        let svc = path.backend.service.as_ref().unwrap();
        assert_eq!(svc.name, "test");
        assert_eq!(svc.port.as_ref().unwrap().number, Some(80));
    }

    #[test]
    fn misspelled_fields_are_errors_not_ignored() {
        let v: serde_json::Value = serde_yaml::from_str(
            "apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: x}\nspec:\n  rules:\n  - http:\n      paths:\n      - path: /\n        backend: {serviceName: a, sevicePort: 80}\n",
        )
        .unwrap();
        let e = convert(v).unwrap_err();
        assert!(e.contains("sevicePort"), "{e}");
    }
}
