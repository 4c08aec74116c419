//! Behavioural tests through real loaded plugins (one binary, `api/*` modules).

mod api {
    pub(crate) mod common;

    mod c_plugin;
    mod cli;
    mod hostile;
    mod methods;
}
