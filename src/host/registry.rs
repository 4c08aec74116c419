//! The plugin registry: named plugins, each loaded once per file.
//!
//! A proxy configures plugins by name (`plugins: [{name, file, config}]`).
//! The registry loads each file once (two names on one file share the
//! library, as in today's host, whose statics are per library), tells which
//! ABI it speaks, initialises it with its config, and hands out `Arc`s. It
//! refuses a duplicate name. Dropping the registry (or [`Registry::remove`]
//! and the last session ending) shuts a plugin down.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::loader::{inspect, LegacyPlugin, LoadError};
use crate::transport::V2Plugin;

/// A loaded plugin of either ABI.
#[derive(Clone, Debug)]
pub enum Loaded {
    /// Speaks the legacy ABI.
    Legacy(Arc<LegacyPlugin>),
    /// Speaks the v2 ABI.
    V2(Arc<V2Plugin>),
}

/// Why a plugin could not be registered.
#[derive(Debug)]
#[non_exhaustive]
pub enum RegistryError {
    /// A plugin of this name is already registered.
    Duplicate(String),
    /// The library failed to load or initialise.
    Load(LoadError),
    /// The library speaks no ABI we know (the problems `inspect` found).
    Unknown(Vec<String>),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Duplicate(n) => write!(f, "plugin `{n}` is already registered"),
            Self::Load(e) => e.fmt(f),
            Self::Unknown(p) => write!(f, "not a plugin: {}", p.join("; ")),
        }
    }
}

impl std::error::Error for RegistryError {}

impl From<LoadError> for RegistryError {
    fn from(e: LoadError) -> Self {
        Self::Load(e)
    }
}

/// See the [module docs](self).
#[derive(Debug, Default)]
pub struct Registry {
    by_name: HashMap<String, Loaded>,
    by_file: HashMap<PathBuf, Loaded>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `name` for the library at `file`, initialised with `config`
    /// (JSON text; empty for none). A file already loaded is reused and
    /// initialised again with the new config, as today's host does on reload.
    ///
    /// # Errors
    ///
    /// [`RegistryError`] for a duplicate name, a load failure, or a library
    /// that is not a plugin.
    pub fn register(
        &mut self,
        name: &str,
        file: impl AsRef<Path>,
        config: &[u8],
    ) -> Result<Loaded, RegistryError> {
        if self.by_name.contains_key(name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        let path = file.as_ref();
        let canon = path
            .canonicalize()
            .map_err(|e| LoadError::Path(path.to_path_buf(), e))?;
        let loaded = match self.by_file.get(&canon) {
            Some(Loaded::Legacy(p)) => {
                p.initialize(config)?;
                Loaded::Legacy(Arc::clone(p))
            }
            // A v2 instance is per init: a second name gets its own instance
            // of the same library.
            Some(Loaded::V2(_)) | None => self.load(&canon, config)?,
        };
        self.by_file.entry(canon).or_insert_with(|| loaded.clone());
        self.by_name.insert(name.to_string(), loaded.clone());
        Ok(loaded)
    }

    fn load(&self, path: &Path, config: &[u8]) -> Result<Loaded, RegistryError> {
        let report = inspect(path)?;
        match report.abi {
            "legacy" => {
                let p = LegacyPlugin::load(path)?;
                p.initialize(config)?;
                Ok(Loaded::Legacy(Arc::new(p)))
            }
            "v2" => Ok(Loaded::V2(Arc::new(V2Plugin::load(path, config)?))),
            _ => Err(RegistryError::Unknown(report.problems)),
        }
    }

    /// The plugin registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Loaded> {
        self.by_name.get(name)
    }

    /// Forgets `name`; the library is shut down when nothing else uses it.
    pub fn remove(&mut self, name: &str) -> Option<Loaded> {
        let loaded = self.by_name.remove(name)?;
        let still_used = |l: &Loaded| {
            self.by_name.values().any(|o| match (o, l) {
                (Loaded::Legacy(a), Loaded::Legacy(b)) => Arc::ptr_eq(a, b),
                (Loaded::V2(a), Loaded::V2(b)) => Arc::ptr_eq(a, b),
                _ => false,
            })
        };
        if !still_used(&loaded) {
            self.by_file.retain(|_, l| !match (l, &loaded) {
                (Loaded::Legacy(a), Loaded::Legacy(b)) => Arc::ptr_eq(a, b),
                (Loaded::V2(a), Loaded::V2(b)) => Arc::ptr_eq(a, b),
                _ => false,
            });
        }
        Some(loaded)
    }

    /// The registered names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
