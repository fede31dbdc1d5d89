//! Where routes come from: the main config file and the route files matched by `dynamic_config_globs`.
//!
//! Both end up as one list of validated routes handed to the schedule, at start-up, on SIGHUP and whenever a route
//! file appears, changes or disappears, so there is a single code path for all of them. A route file that is
//! unreadable or invalid (half-written, a typo) is reported with its path and key, and the routes it announced
//! before stay as they were: a bad edit never withdraws a healthy route. Only a file that is gone withdraws its
//! routes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use switchyard_config::registrar::{Announcer, RegistrarConfig, ResolvedRoute, RouteFile, resolve_routes};
use switchyard_config::{ConfigError, Loaded, parse_json, parse_yaml};
use switchyard_runtime::nats::NatsTls;

/// Why the main config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read; fixing the path or permissions and retrying helps.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; the error names the key.
    #[error("config file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key and the problem.
        source: ConfigError,
    },
}

/// Parses `text` as JSON when the file name says so, YAML otherwise (YAML also reads JSON, with worse messages).
fn parse_by_name<T>(path: &Path, text: &str) -> Result<Loaded<T>, ConfigError>
where
    T: serde::de::DeserializeOwned + switchyard_config::error::Validate,
{
    if path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json")) { parse_json(text) } else { parse_yaml(text) }
}

/// Reads and validates the main config file.
pub fn read_config(path: &Path) -> Result<Loaded<RegistrarConfig>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    let invalid = |source| LoadError::Invalid { path: path.to_owned(), source };
    let loaded: Loaded<RegistrarConfig> = parse_by_name(path, &text).map_err(invalid)?;
    for (index, pattern) in loaded.value.dynamic_config_globs.iter().enumerate() {
        glob::Pattern::new(pattern)
            .map_err(|err| invalid(ConfigError::new(format!("dynamic_config_globs[{index}]"), format!("is not a glob pattern: {err}"))))?;
    }
    Ok(loaded)
}

/// The TLS settings for NATS named by `nats_mtls_config`, with the PEM files read; `None` when TLS is off.
pub fn nats_tls(config: &RegistrarConfig) -> Result<Option<NatsTls>, ConfigError> {
    let files = &config.nats_mtls_config;
    if !files.enabled {
        return Ok(None);
    }
    let read = |key: &str, path: &str| {
        std::fs::read_to_string(path).map_err(|err| ConfigError::new(format!("nats_mtls_config.{key}"), format!("cannot read {path}: {err}")))
    };
    let ca_pem = read("ca_path", &files.ca_path)?;
    let client_identity = if files.cert_path.is_empty() {
        None
    } else {
        Some((read("cert_path", &files.cert_path)?, read("key_path", &files.key_path)?))
    };
    Ok(Some(NatsTls { ca_pem, client_identity }))
}

/// One route file as last read.
#[derive(Debug)]
struct RouteFileState {
    text: String,
    routes: Vec<ResolvedRoute>,
}

/// What a scan found: for each matched path, its text or why it could not be read.
pub type Readings = Vec<(PathBuf, Result<String, String>)>;

/// A problem with one route file, reported without touching its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The file.
    pub path: PathBuf,
    /// What is wrong (with the key, for config errors).
    pub problem: String,
}

/// What one update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Whether the set of routes differs from before.
    pub changed: bool,
    /// Files that could not be used this time.
    pub problems: Vec<FileProblem>,
    /// Files that were (re)loaded, with the keys in them nothing reads.
    pub loaded: Vec<(PathBuf, Vec<String>)>,
    /// Files whose routes were withdrawn because they are gone.
    pub removed: Vec<PathBuf>,
}

/// The route files currently matched by the globs.
#[derive(Debug, Default)]
pub struct RouteFiles {
    globs: Vec<String>,
    files: BTreeMap<PathBuf, RouteFileState>,
    /// The last unusable reading of each file, so one bad edit is reported once, not at every scan.
    rejected: BTreeMap<PathBuf, Result<String, String>>,
}

impl RouteFiles {
    /// Route files matching `globs` (none read yet).
    pub fn new(globs: Vec<String>) -> Self {
        Self { globs, files: BTreeMap::new(), rejected: BTreeMap::new() }
    }

    /// Whether there is anything to watch.
    pub fn is_watching(&self) -> bool {
        !self.globs.is_empty()
    }

    /// The patterns being watched.
    pub fn globs(&self) -> &[String] {
        &self.globs
    }

    /// Watches `globs` from now on; files no longer matched go at the next update. Everything is read again then,
    /// since the main config the routes are resolved against may have changed too.
    pub fn rewatch(&mut self, globs: Vec<String>) {
        self.globs = globs;
        self.rejected.clear();
        for state in self.files.values_mut() {
            state.text.clear();
        }
    }

    /// Every route of every file, in path order.
    pub fn routes(&self) -> impl Iterator<Item = &ResolvedRoute> {
        self.files.values().flat_map(|state| state.routes.iter())
    }

    /// Applies a scan: new and changed files are parsed, vanished files dropped, bad files reported and kept as
    /// they were.
    pub fn update(&mut self, readings: Readings, announcer: &Announcer) -> Update {
        let mut update = Update::default();
        let seen: Vec<PathBuf> = readings.iter().map(|(path, _)| path.clone()).collect();
        for (path, reading) in readings {
            if self.rejected.get(&path) == Some(&reading) {
                continue;
            }
            let text = match reading {
                Ok(text) => text,
                Err(problem) => {
                    self.rejected.insert(path.clone(), Err(problem.clone()));
                    update.problems.push(FileProblem { path, problem });
                    continue;
                }
            };
            if self.files.get(&path).is_some_and(|state| state.text == text) {
                self.rejected.remove(&path);
                continue;
            }
            let parsed = parse_by_name::<RouteFile>(&path, &text)
                .and_then(|loaded| resolve_routes(&loaded.value.routes, "routes", announcer).map(|routes| (routes, loaded.ignored_keys)));
            match parsed {
                Ok((routes, ignored)) => {
                    self.rejected.remove(&path);
                    let previous = self.files.insert(path.clone(), RouteFileState { text, routes });
                    let now = self.files.get(&path).map(|state| &state.routes);
                    update.changed |= previous.as_ref().map(|state| &state.routes) != now;
                    update.loaded.push((path, ignored));
                }
                Err(err) => {
                    self.rejected.insert(path.clone(), Ok(text));
                    update.problems.push(FileProblem { path, problem: err.to_string() });
                }
            }
        }
        self.rejected.retain(|path, _| seen.contains(path));
        let gone: Vec<PathBuf> = self.files.keys().filter(|path| !seen.contains(path)).cloned().collect();
        for path in gone {
            if self.files.remove(&path).is_some_and(|state| !state.routes.is_empty()) {
                update.changed = true;
            }
            update.removed.push(path);
        }
        update
    }

    /// Finds and reads every file the globs match now. Blocking: run it off the async workers.
    pub fn scan(globs: &[String]) -> Readings {
        let mut readings: BTreeMap<PathBuf, Result<String, String>> = BTreeMap::new();
        for pattern in globs {
            let paths = match glob::glob(pattern) {
                Ok(paths) => paths,
                Err(err) => {
                    tracing::error!(pattern, %err, "dynamic_config_globs entry is not a glob pattern");
                    continue;
                }
            };
            for entry in paths {
                match entry {
                    Ok(path) if path.is_file() => {
                        let text = std::fs::read_to_string(&path).map_err(|err| format!("cannot read: {err}"));
                        readings.insert(path, text);
                    }
                    Ok(_) => {}
                    Err(err) => {
                        readings.insert(err.path().to_owned(), Err(format!("cannot read: {}", err.error())));
                    }
                }
            }
        }
        readings.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcer() -> Announcer {
        Announcer { host: "10.0.0.1".into(), availability_zone: String::new(), private_instance_id: "iid".into() }
    }

    fn route_file(name: &str, port: u16) -> String {
        format!("routes:\n  - {{name: {name}, port: {port}, uris: [{name}.example.com], registration_interval: 1s}}\n")
    }

    fn names(files: &RouteFiles) -> Vec<String> {
        files.routes().map(|route| route.name.clone()).collect()
    }

    #[test]
    fn files_come_change_and_go() {
        let mut files = RouteFiles::new(vec!["/x/*.yml".into()]);
        let a = PathBuf::from("/x/a.yml");
        let b = PathBuf::from("/x/b.yml");
        let update = files.update(vec![(a.clone(), Ok(route_file("a", 1))), (b.clone(), Ok(route_file("b", 2)))], &announcer());
        assert!(update.changed);
        assert_eq!(names(&files), vec!["a", "b"]);
        // Same text: nothing to do.
        let update = files.update(vec![(a.clone(), Ok(route_file("a", 1))), (b.clone(), Ok(route_file("b", 2)))], &announcer());
        assert_eq!(update, Update::default());
        // A bad edit is reported and loses nothing; an unreadable file likewise.
        let update = files.update(vec![(a.clone(), Ok("routes: [{name: a}]".into())), (b.clone(), Err("cannot read: denied".into()))], &announcer());
        assert!(!update.changed);
        assert_eq!(update.problems.len(), 2);
        assert!(update.problems[0].problem.contains("routes[0].registration_interval"), "{:?}", update.problems);
        assert_eq!(names(&files), vec!["a", "b"]);
        // The same bad readings are reported once.
        let update = files.update(vec![(a.clone(), Ok("routes: [{name: a}]".into())), (b.clone(), Err("cannot read: denied".into()))], &announcer());
        assert_eq!(update, Update::default());
        // A real change, and a file that is gone.
        let update = files.update(vec![(a.clone(), Ok(route_file("a", 3)))], &announcer());
        assert!(update.changed);
        assert_eq!(update.removed, vec![b]);
        assert_eq!(names(&files), vec!["a"]);
    }

    #[test]
    fn json_files_and_ignored_keys() {
        let mut files = RouteFiles::new(vec!["/x/*".into()]);
        let text = r#"{"routes":[{"name":"j","port":1,"uris":["j.com"],"registration_interval":"1s","sni_port":9}]}"#;
        let update = files.update(vec![(PathBuf::from("/x/r.json"), Ok(text.into()))], &announcer());
        assert_eq!(update.loaded, vec![(PathBuf::from("/x/r.json"), vec!["routes.0.sni_port".to_owned()])]);
    }

    #[test]
    fn scan_reads_matching_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("one.yml"), route_file("one", 1)).unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        std::fs::create_dir(dir.path().join("sub.yml")).unwrap();
        let readings = RouteFiles::scan(&[format!("{}/*.yml", dir.path().display())]);
        assert_eq!(readings.len(), 1);
        assert_eq!(readings[0].0, dir.path().join("one.yml"));
    }

    #[test]
    fn main_config_errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registrar.json");
        std::fs::write(&path, r#"{"message_bus_servers":[{"host":"h"}],"dynamic_config_globs":["[oops"]}"#).unwrap();
        let err = read_config(&path).unwrap_err();
        assert!(err.to_string().contains("dynamic_config_globs[0]"), "{err}");
        let err = read_config(&dir.path().join("missing.yml")).unwrap_err();
        assert!(matches!(err, LoadError::Read { .. }), "{err}");
    }
}
