//! Chains the plugin into the node's network configuration, and takes it out again.
//!
//! The runtime uses the first configuration file of the directory in name order (as
//! libcni sorts them). The plugin's entry is appended to that file's `plugins`, or updated
//! where it already is; every other field stays as it was, in its order. Files are
//! replaced atomically (write beside, then rename), so the runtime never reads half a file.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value, json};

use super::spec::PLUGIN_TYPE;
use crate::agent::status::CniStatus;

/// Extensions of the files the runtime reads, as libcni lists them.
const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Errors of install and uninstall, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The directory has no network configuration (yet: the main plugin installs it).
    #[error("no network configuration in {0} (is the node's CNI plugin installed?)")]
    NoConfig(PathBuf),
    /// The first configuration is a single-plugin `.conf`: nothing can be chained to it.
    #[error(
        "{0} is a single-plugin configuration; chaining needs a .conflist (ask the main plugin for one)"
    )]
    NotAList(PathBuf),
    /// A file could not be read, written or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

fn file_error(path: &Path, e: impl ToString) -> InstallError {
    InstallError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The plugin's settings in the conflist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginSettings {
    /// The agent's socket.
    pub socket: PathBuf,
    /// Let pods start when the agent is unreachable.
    pub fail_open: bool,
}

impl PluginSettings {
    fn entry(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "socket": self.socket.display().to_string(),
            "failOpen": self.fail_open,
        })
    }
}

/// Network configuration files of `dir`, in the order the runtime considers them.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| file_error(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read_json(path: &Path) -> Result<Value, InstallError> {
    let text = fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_error(path, format!("not valid JSON: {e}")))
}

/// Writes `value` to `path` through a temporary file in the same directory, keeping the
/// file's permissions.
fn write_atomically(path: &Path, value: &Value) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // A name without a configuration extension: the runtime never reads it.
    let temp = dir.join(format!(".{name}.policy-agent-tmp"));
    let mode = fs::metadata(path).map_or(0o644, |m| m.permissions().mode());
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize") + "\n";
    let mut file = fs::File::create(&temp).map_err(|e| file_error(&temp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::set_permissions(&temp, fs::Permissions::from_mode(mode)))
        .map_err(|e| file_error(&temp, e))?;
    fs::rename(&temp, path).map_err(|e| file_error(path, e))
}

fn plugins_of<'a>(path: &Path, conf: &'a mut Value) -> Result<&'a mut Vec<Value>, InstallError> {
    conf.get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| file_error(path, "has no \"plugins\" list"))
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Chains the plugin into the runtime's network configuration in `dir` (the first file);
/// returns that file. Idempotent: the file is rewritten only if the entry changes.
pub fn install(dir: &Path, settings: &PluginSettings) -> Result<PathBuf, InstallError> {
    let path = config_files(dir)?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig(dir.to_owned()))?;
    let mut conf = read_json(&path)?;
    if conf.get("plugins").is_none() {
        return Err(InstallError::NotAList(path));
    }
    let before = conf.clone();
    let plugins = plugins_of(&path, &mut conf)?;
    let entry = settings.entry();
    match plugins.iter_mut().find(|p| is_ours(p)) {
        // Settings the operator added by hand stay; ours are brought up to date.
        Some(Value::Object(existing)) => merge(existing, entry),
        _ => plugins.push(entry),
    }
    if conf != before {
        write_atomically(&path, &conf)?;
    }
    Ok(path)
}

fn merge(existing: &mut Map<String, Value>, entry: Value) {
    if let Value::Object(entry) = entry {
        for (k, v) in entry {
            existing.insert(k, v);
        }
    }
}

/// Takes the plugin out of every configuration in `dir`; returns the files changed.
pub fn uninstall(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut changed = Vec::new();
    for path in config_files(dir)? {
        let mut conf = read_json(&path)?;
        let Some(plugins) = conf.get_mut("plugins").and_then(Value::as_array_mut) else {
            continue;
        };
        let before = plugins.len();
        plugins.retain(|p| !is_ours(p));
        if plugins.len() != before {
            write_atomically(&path, &conf)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

/// How the plugin is installed in `dir`, for the agent's status.
pub fn status(dir: &Path) -> CniStatus {
    let files = config_files(dir).unwrap_or_default();
    for path in files {
        let Ok(conf) = read_json(&path) else { continue };
        let ours = conf
            .get("plugins")
            .and_then(Value::as_array)
            .and_then(|plugins| plugins.iter().find(|p| is_ours(p)));
        if let Some(entry) = ours {
            return CniStatus {
                conflist: Some(path.display().to_string()),
                fail_open: entry.get("failOpen").and_then(Value::as_bool) == Some(true),
            };
        }
    }
    CniStatus::default()
}

/// Copies the plugin binary `from` into `bin_dir` (atomically: a runtime may be running it).
pub fn install_binary(from: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let to = bin_dir.join(PLUGIN_TYPE);
    let temp = bin_dir.join(format!(".{PLUGIN_TYPE}.policy-agent-tmp"));
    fs::copy(from, &temp).map_err(|e| file_error(&temp, e))?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o755))
        .map_err(|e| file_error(&temp, e))?;
    fs::rename(&temp, &to).map_err(|e| file_error(&to, e))?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration directory of its own, removed on drop.
    struct ConfDir(PathBuf);

    impl ConfDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "policy-agent-install-{name}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for ConfDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const MAIN: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "calico", "log_level": "info", "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ],
  "x-vendor-note": "kept"
}"#;

    fn settings(fail_open: bool) -> PluginSettings {
        PluginSettings {
            socket: PathBuf::from("/run/policy-agent/agent.sock"),
            fail_open,
        }
    }

    #[test]
    fn install_appends_the_plugin_once_and_keeps_everything_else() {
        let dir = ConfDir::new("append");
        let file = dir.0.join("10-calico.conflist");
        fs::write(&file, MAIN).unwrap();
        fs::write(dir.0.join("99-other.conflist"), MAIN).unwrap();

        assert_eq!(install(&dir.0, &settings(false)).unwrap(), file);
        let once = fs::read_to_string(&file).unwrap();
        assert_eq!(install(&dir.0, &settings(false)).unwrap(), file);
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            once,
            "a second install changes nothing"
        );

        let conf: Value = serde_json::from_str(&once).unwrap();
        let original: Value = serde_json::from_str(MAIN).unwrap();
        let plugins = conf["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[..2], original["plugins"].as_array().unwrap()[..]);
        assert_eq!(plugins[2]["type"], PLUGIN_TYPE);
        for field in ["cniVersion", "name", "x-vendor-note"] {
            assert_eq!(conf[field], original[field], "{field}");
        }
        let keys: Vec<&String> = conf.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["cniVersion", "name", "plugins", "x-vendor-note"]);
        // Only the runtime's first file is changed, and no temporary file is left.
        assert_eq!(
            fs::read_to_string(dir.0.join("99-other.conflist")).unwrap(),
            MAIN
        );
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 2);
        assert_eq!(
            status(&dir.0),
            CniStatus {
                conflist: Some(file.display().to_string()),
                fail_open: false
            }
        );
    }

    #[test]
    fn reinstalling_updates_the_entry_in_place() {
        let dir = ConfDir::new("update");
        fs::write(dir.0.join("10-calico.conflist"), MAIN).unwrap();
        install(&dir.0, &settings(false)).unwrap();
        install(&dir.0, &settings(true)).unwrap();
        let conf = read_json(&dir.0.join("10-calico.conflist")).unwrap();
        let ours: Vec<&Value> = conf["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| is_ours(p))
            .collect();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0]["failOpen"], true);
        assert!(status(&dir.0).fail_open);
    }

    #[test]
    fn uninstall_restores_the_original_configuration() {
        let dir = ConfDir::new("uninstall");
        let file = dir.0.join("10-calico.conflist");
        fs::write(&file, MAIN).unwrap();
        install(&dir.0, &settings(false)).unwrap();
        assert_eq!(uninstall(&dir.0).unwrap(), std::slice::from_ref(&file));
        let restored = read_json(&file).unwrap();
        assert_eq!(restored, serde_json::from_str::<Value>(MAIN).unwrap());
        assert!(
            uninstall(&dir.0).unwrap().is_empty(),
            "a second uninstall changes nothing"
        );
        assert_eq!(status(&dir.0), CniStatus::default());
    }

    #[test]
    fn a_directory_without_a_list_is_a_clear_error() {
        let dir = ConfDir::new("errors");
        assert!(matches!(
            install(&dir.0, &settings(false)),
            Err(InstallError::NoConfig(_))
        ));
        fs::write(
            dir.0.join("10-bridge.conf"),
            r#"{"cniVersion":"1.0.0","type":"bridge"}"#,
        )
        .unwrap();
        let e = install(&dir.0, &settings(false)).unwrap_err();
        assert!(e.to_string().contains("10-bridge.conf"), "{e}");
        fs::write(dir.0.join("05-broken.conflist"), "{").unwrap();
        let e = install(&dir.0, &settings(false)).unwrap_err();
        assert!(
            e.to_string().contains("05-broken.conflist: not valid JSON"),
            "{e}"
        );
    }
}
