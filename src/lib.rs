//! wicket: a Kubernetes Ingress controller that renders an nginx
//! configuration from Ingress objects, proves it with `nginx -t`, and
//! hot-reloads an nginx child process.
//!
//! The pipeline (see ARCHITECTURE.md):
//! source ([`source`]) → [`cluster::Cluster`] → [`build::build`] →
//! [`config::Config`] → [`render::Renderer`] → [`nginx::Nginx`].

pub mod admin;
pub mod annotations;
pub mod build;
pub mod certs;
pub mod check;
pub mod cluster;
pub mod conf_syntax;
pub mod config;
pub mod controller;
pub mod engine;
pub mod leader;
pub mod listen;
pub mod metrics;
pub mod netinfo;
pub mod nginx;
pub mod parallel;
pub mod problem;
pub mod render;
pub mod request_metrics;
pub mod resolve;
pub mod serve;
pub mod settings;
pub mod source;
pub mod status;
pub mod values;
pub mod webhook;
