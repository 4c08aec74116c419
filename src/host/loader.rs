//! Loading legacy plugins: the one door to `libloading`.
//!
//! [`LegacyPlugin::load`] resolves the six symbols, refuses a library that lacks
//! one (an error, never a panic), and refuses a symbol that resolves outside the
//! library itself, such as libc's `shutdown` when the plugin forgot to export its
//! own. [`inspect`] reports the same facts without refusing.

use std::ffi::{c_void, CStr};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libloading::Library;

use crate::abi::legacy::{
    CloseSessionStreamFn, DataEventFn, EventStreamFn, FfiBuffer, InitializeFn, PluginFreeFn,
    RegisterSessionStreamFn, ShutdownFn, SYMBOLS,
};
use crate::abi::v2::{self, PluginTable};

/// Why a plugin library could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError {
    /// The path does not exist or cannot be canonicalised.
    Path(PathBuf, std::io::Error),
    /// `dlopen` failed.
    Open(PathBuf, libloading::Error),
    /// A mandatory symbol is missing.
    MissingSymbol(&'static str),
    /// A symbol resolves to an object other than the plugin (for example libc's `shutdown`).
    ForeignSymbol {
        /// The symbol name.
        symbol: &'static str,
        /// The object it resolved into.
        object: String,
    },
    /// The configuration is larger than the ABI's `u32` length.
    ConfigTooLarge(usize),
    /// The v2 table failed its version or layout check.
    V2(v2::TableError),
    /// The v2 plugin's `init` failed.
    Init(i32),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(p, e) => write!(f, "cannot open plugin {}: {e}", p.display()),
            Self::Open(p, e) => write!(f, "cannot load plugin {}: {e}", p.display()),
            Self::MissingSymbol(s) => write!(f, "plugin does not export the symbol `{s}`"),
            Self::ForeignSymbol { symbol, object } => write!(
                f,
                "symbol `{symbol}` resolves outside the plugin, in {object}: the plugin does not export it"
            ),
            Self::ConfigTooLarge(n) => write!(f, "plugin config of {n} bytes exceeds u32"),
            Self::V2(e) => write!(f, "v2 plugin refused: {e}"),
            Self::Init(s) => write!(
                f,
                "v2 plugin init failed with status {s} ({})",
                v2::Status(*s).name()
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// The resolved entry points of a legacy plugin.
#[derive(Clone, Copy, Debug)]
pub struct LegacySymbols {
    /// `initialize`.
    pub initialize: InitializeFn,
    /// `plugin_free` (never called).
    pub plugin_free: PluginFreeFn,
    /// `register_session_stream`.
    pub register_session_stream: RegisterSessionStreamFn,
    /// `event_stream`.
    pub event_stream: EventStreamFn,
    /// `close_session_stream`.
    pub close_session_stream: CloseSessionStreamFn,
    /// `shutdown`.
    pub shutdown: ShutdownFn,
}

/// A loaded legacy plugin library.
///
/// Dropping it calls `shutdown` once (unless [`LegacyPlugin::shutdown`] already
/// did) and then unloads the library. The caller must have closed every session
/// first; the transports hold an `Arc` to the plugin in each session so that
/// cannot be violated by safe code.
pub struct LegacyPlugin {
    path: PathBuf,
    syms: LegacySymbols,
    shut_down: Mutex<bool>,
    // Declared last: dropped after everything that may hold its code pointers.
    _lib: Library,
}

impl fmt::Debug for LegacyPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyPlugin")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LegacyPlugin {
    /// Loads a plugin and resolves its six symbols; does not call `initialize`.
    ///
    /// # Errors
    ///
    /// [`LoadError`] if the file cannot be opened, a symbol is missing, or a
    /// symbol resolves outside the library.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path
            .as_ref()
            .canonicalize()
            .map_err(|e| LoadError::Path(path.as_ref().to_path_buf(), e))?;
        // SAFETY: loading a library runs its initialisers; the plugin is code the
        // operator chose to load, which is the trust model of every plugin host.
        let lib = unsafe { Library::new(&path) }.map_err(|e| LoadError::Open(path.clone(), e))?;
        let mut addrs = [std::ptr::null::<c_void>(); 6];
        for (i, name) in SYMBOLS.iter().enumerate() {
            let addr = symbol_address(&lib, name).ok_or(LoadError::MissingSymbol(name))?;
            match object_of(addr) {
                Some(obj) if same_file(&obj, &path) => {}
                other => {
                    return Err(LoadError::ForeignSymbol {
                        symbol: name,
                        object: other.unwrap_or_else(|| "an unknown object".into()),
                    })
                }
            }
            addrs[i] = addr;
        }
        // SAFETY: each address was resolved from the plugin under the legacy
        // symbol name whose C signature these function types spell out
        // (legacy-abi.md §1); a plugin that exports another signature under
        // these names breaks the ABI contract it claims.
        let syms = unsafe {
            LegacySymbols {
                initialize: std::mem::transmute::<*const c_void, InitializeFn>(addrs[0]),
                plugin_free: std::mem::transmute::<*const c_void, PluginFreeFn>(addrs[1]),
                register_session_stream: std::mem::transmute::<
                    *const c_void,
                    RegisterSessionStreamFn,
                >(addrs[2]),
                event_stream: std::mem::transmute::<*const c_void, EventStreamFn>(addrs[3]),
                close_session_stream: std::mem::transmute::<*const c_void, CloseSessionStreamFn>(
                    addrs[4],
                ),
                shutdown: std::mem::transmute::<*const c_void, ShutdownFn>(addrs[5]),
            }
        };
        Ok(Self {
            path,
            syms,
            shut_down: Mutex::new(false),
            _lib: lib,
        })
    }

    /// The canonical path the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `initialize` with the JSON config text (empty for none).
    ///
    /// # Errors
    ///
    /// [`LoadError::ConfigTooLarge`] if the config does not fit the ABI's u32 length.
    pub fn initialize(&self, config: &[u8]) -> Result<(), LoadError> {
        let len =
            u32::try_from(config.len()).map_err(|_| LoadError::ConfigTooLarge(config.len()))?;
        // SAFETY: the pointer and length describe `config`, which outlives the
        // call; the plugin must copy it (ABI rule).
        unsafe { (self.syms.initialize)(config.as_ptr(), len) };
        Ok(())
    }

    /// Calls `register_session_stream`; `true` if the plugin accepted the entry.
    ///
    /// Entries longer than `u32::MAX` bytes are refused without a call.
    pub fn register_session(&self, sid: u32, entry: &str, cb: DataEventFn) -> bool {
        let Ok(len) = u32::try_from(entry.len()) else {
            return false;
        };
        // SAFETY: entry outlives the call and the plugin copies it; cb is a
        // process-lifetime function.
        unsafe { (self.syms.register_session_stream)(sid, entry.as_ptr(), len, cb) != 0 }
    }

    /// Sends one host-to-plugin message through `event_stream`.
    pub fn event_stream(&self, buf: &FfiBuffer) {
        // SAFETY: buf and its payload are borrowed for the duration of the call,
        // which is all the ABI lets the plugin keep them.
        unsafe { (self.syms.event_stream)(buf) }
    }

    /// Calls `close_session_stream`.
    pub fn close_session(&self, sid: u32) {
        // SAFETY: a plain integer argument.
        unsafe { (self.syms.close_session_stream)(sid) }
    }

    /// Calls `shutdown` once; later calls (and the one on drop) do nothing.
    pub fn shutdown(&self) {
        let mut done = self.shut_down.lock().unwrap_or_else(|e| e.into_inner());
        if !*done {
            *done = true;
            // SAFETY: no argument; called at most once per load.
            unsafe { (self.syms.shutdown)() }
        }
    }

    /// The raw symbols, for transports that call them on the hot path.
    pub fn symbols(&self) -> &LegacySymbols {
        &self.syms
    }
}

impl Drop for LegacyPlugin {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Opens a v2 plugin library and returns its checked table.
///
/// # Errors
///
/// [`LoadError`] when the library cannot be opened, lacks
/// `nylon_v2_plugin`, returns NULL, or its table fails the version and layout
/// checks.
pub fn load_v2(path: impl AsRef<Path>) -> Result<(Library, &'static PluginTable), LoadError> {
    let path = path
        .as_ref()
        .canonicalize()
        .map_err(|e| LoadError::Path(path.as_ref().to_path_buf(), e))?;
    // SAFETY: as in `LegacyPlugin::load`: runs the library's initialisers only.
    let lib = unsafe { Library::new(&path) }.map_err(|e| LoadError::Open(path.clone(), e))?;
    let table = v2_table(&lib, &path)?;
    Ok((lib, table))
}

fn v2_table(lib: &Library, path: &Path) -> Result<&'static PluginTable, LoadError> {
    let addr = symbol_address(lib, v2::PLUGIN_SYMBOL)
        .ok_or(LoadError::MissingSymbol(v2::PLUGIN_SYMBOL))?;
    match object_of(addr) {
        Some(obj) if same_file(&obj, path) => {}
        other => {
            return Err(LoadError::ForeignSymbol {
                symbol: v2::PLUGIN_SYMBOL,
                object: other.unwrap_or_else(|| "an unknown object".into()),
            })
        }
    }
    // SAFETY: the symbol is the plugin's own `nylon_v2_plugin`, whose C
    // signature is `const nylon_v2_plugin_t *(void)` by the v2 ABI.
    let get = unsafe { std::mem::transmute::<*const c_void, v2::GetPluginFn>(addr) };
    // SAFETY: a getter with no arguments, by the v2 ABI contract.
    let table = unsafe { get() };
    if table.is_null() {
        return Err(LoadError::V2(v2::TableError::Null));
    }
    // SAFETY: non-null; the table is static data of the plugin, which stays
    // loaded as long as the returned Library does (the caller keeps both
    // together). Only the fixed header is read before `check`.
    let table: &'static PluginTable = unsafe { &*table };
    table.check().map_err(LoadError::V2)?;
    Ok(table)
}

/// What [`inspect`] found out about a library.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InspectReport {
    /// The path as given.
    pub path: String,
    /// `"v2"` for a checked v2 table, `"legacy"` when all six legacy symbols
    /// are the plugin's own, else `"unknown"`.
    pub abi: &'static str,
    /// The v2 plugin's name, when it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The v2 plugin's entries (legacy plugins do not list theirs).
    pub entries: Vec<String>,
    /// One line per legacy symbol.
    pub symbols: Vec<SymbolReport>,
    /// Every problem found; empty when the plugin is loadable.
    pub problems: Vec<String>,
}

/// One symbol in an [`InspectReport`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SymbolReport {
    /// Symbol name.
    pub name: &'static str,
    /// Whether `dlsym` found it at all.
    pub present: bool,
    /// The object it resolved into, when found.
    pub object: Option<String>,
    /// Whether that object is the plugin itself.
    pub in_library: bool,
}

/// Opens a library and reports which ABI it speaks and every problem. It
/// calls no function of a legacy plugin; of a v2 plugin it calls only the
/// table getter `nylon_v2_plugin()`, which the v2 ABI requires to be a pure
/// getter.
///
/// # Errors
///
/// [`LoadError::Path`] or [`LoadError::Open`] when the library cannot be opened at all.
pub fn inspect(path: impl AsRef<Path>) -> Result<InspectReport, LoadError> {
    let given = path.as_ref();
    let canon = given
        .canonicalize()
        .map_err(|e| LoadError::Path(given.to_path_buf(), e))?;
    // SAFETY: as in `LegacyPlugin::load`: runs the library's initialisers only.
    let lib = unsafe { Library::new(&canon) }.map_err(|e| LoadError::Open(canon.clone(), e))?;
    if symbol_address(&lib, v2::PLUGIN_SYMBOL).is_some() {
        return Ok(inspect_v2(given, &lib, &canon));
    }
    let mut symbols = Vec::new();
    let mut problems = Vec::new();
    for name in SYMBOLS {
        let addr = symbol_address(&lib, name);
        let object = addr.and_then(object_of);
        let in_library = object.as_deref().is_some_and(|o| same_file(o, &canon));
        match (addr, &object) {
            (None, _) => problems.push(format!("missing symbol `{name}`")),
            (Some(_), Some(obj)) if !in_library => problems.push(format!(
                "symbol `{name}` resolves outside the plugin, in {obj}"
            )),
            (Some(_), None) => {
                problems.push(format!("symbol `{name}` resolves to no known object"))
            }
            _ => {}
        }
        symbols.push(SymbolReport {
            name,
            present: addr.is_some(),
            object,
            in_library,
        });
    }
    let abi = if problems.is_empty() {
        "legacy"
    } else {
        "unknown"
    };
    Ok(InspectReport {
        path: given.display().to_string(),
        abi,
        name: None,
        entries: Vec::new(),
        symbols,
        problems,
    })
}

fn inspect_v2(given: &Path, lib: &Library, canon: &Path) -> InspectReport {
    let addr = symbol_address(lib, v2::PLUGIN_SYMBOL);
    let object = addr.and_then(object_of);
    let in_library = object.as_deref().is_some_and(|o| same_file(o, canon));
    let mut report = InspectReport {
        path: given.display().to_string(),
        abi: "unknown",
        name: None,
        entries: Vec::new(),
        symbols: vec![SymbolReport {
            name: v2::PLUGIN_SYMBOL,
            present: true,
            object,
            in_library,
        }],
        problems: Vec::new(),
    };
    match v2_table(lib, canon) {
        Ok(table) => {
            report.abi = "v2";
            // SAFETY: the table passed `check`; names are static plugin data.
            let name = unsafe { table.name.as_bytes() };
            report.name = Some(String::from_utf8_lossy(name).into_owned());
            // SAFETY: as above.
            report.entries = unsafe { table.entry_names() };
        }
        Err(e) => report.problems.push(e.to_string()),
    }
    report
}

fn symbol_address(lib: &Library, name: &str) -> Option<*const c_void> {
    // SAFETY: the symbol is only read as an address, never called through this type.
    let sym = unsafe { lib.get::<*const c_void>(name.as_bytes()) }.ok()?;
    // SAFETY: as above: reading the address the dynamic linker returned.
    let addr = unsafe { sym.try_as_raw_ptr() }?;
    (!addr.is_null()).then_some(addr as *const c_void)
}

/// The file name of the loaded object containing `addr`, via `dladdr`.
fn object_of(addr: *const c_void) -> Option<String> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only reads the loader's tables and writes into `info`.
    let found = unsafe { libc::dladdr(addr, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated name owned by the loader, valid
    // while the object stays loaded (it is: we hold the library).
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(name.to_string_lossy().into_owned())
}

fn same_file(object: &str, canon: &Path) -> bool {
    Path::new(object).canonicalize().is_ok_and(|p| p == canon)
}
