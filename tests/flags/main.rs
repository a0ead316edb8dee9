//! Feature flags, one test binary: remote evaluation over real HTTP to `MockPostHog`
//! ([`remote`]), `/flags?v=4` attribution and `$experiment_exposure` ([`experiments`]), local evaluation through the client ([`local`]), property tests of local
//! evaluation ([`properties`]), remote config payloads ([`remote_config`]), evaluation environments ([`environments`]), and input nested 10 000 deep on a small stack
//! ([`deep_input`]).

mod deep_input;
mod differential_v4;
mod environments;
mod experiments;
mod local;
mod properties;
mod remote;
mod remote_config;
