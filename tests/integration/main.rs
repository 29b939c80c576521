//! Integration tests: the real `routelb` binary and, as later issues land, the fake API
//! server, network namespaces and routing daemons.

mod agent;
mod allocator;
mod cli;
mod dataplane;
mod deploy;
mod leader;
mod netns;
mod observability;
mod support;
mod templates;
