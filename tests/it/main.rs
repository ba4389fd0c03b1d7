//! The single integration-test binary: the real `bkg` daemon, real plug-in processes, real HTTP.

// Helpers are shared between test modules with plain `pub`; nothing here is a public API.
#![allow(unreachable_pub)]

mod conformance;
mod lifecycle;
mod support;
