//! Behavioural tests through real loaded plugins (one binary, `api/*` modules).

mod api {
    pub(crate) mod common;

    mod c_plugin;
    mod cli;
    mod contended;
    mod go;
    pub(crate) mod go_build;
    mod go_legacy;
    mod go_specs;
    mod hostile;
    mod methods;
    mod phase_futures;
    mod v2;

    /// The v2 example plugin's code, linked in-process (its exported symbol is
    /// unused here).
    #[path = "../../examples/v2_plugin.rs"]
    #[allow(dead_code, unreachable_pub)]
    pub(crate) mod v2_example;
}
