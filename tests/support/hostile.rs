//! The hostile-input corpus (`tests/corpus/hostile/`): a valid cluster in `base/`, and in
//! `cases/` one file per case, each the base plus one bad thing. A case file starts with
//! comment lines `# key: value`: `case` (what is bad), `expect` (what must happen), and the
//! fields of [`Case`]. Shared by `matrix`'s test (policy-agent/tests/hostile.rs, which
//! includes this file) and the agent's (tests/hostile_agent.rs).

use std::path::{Path, PathBuf};

/// One case of the corpus, from its header.
#[derive(Debug, Default)]
pub struct Case {
    /// The case file's name.
    pub name: String,
    /// Its bytes, written as they are (a byte order mark, CRLF, bytes that are not UTF-8).
    pub bytes: Vec<u8>,
    /// `file:`: the name it gets in the manifest directory; a base file's name replaces it
    /// (an edit of that file). Default: the case's own name (a new file).
    pub file: String,
    /// `exit:`: `matrix`'s exit status (3: something was rejected; 0: valid input).
    pub exit: i32,
    /// `reports:`: what stderr must say (file, object, field), one per line.
    pub reports: Vec<String>,
    /// `about:`: pods (`ns/name`) whose verdicts may change, only towards denied: those
    /// the bad object selects or is.
    pub about: Vec<String>,
}

impl Case {
    /// Reads the case file at `path`.
    pub fn load(path: &Path) -> Case {
        let bytes = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let mut case = Case {
            file: name.clone(),
            name,
            exit: -1,
            ..Case::default()
        };
        // The header is ASCII; whatever follows (or a BOM before it) need not be UTF-8.
        let text = String::from_utf8_lossy(&bytes);
        for line in text.trim_start_matches('\u{feff}').lines() {
            let Some(comment) = line.strip_prefix("# ") else {
                break;
            };
            let Some((key, value)) = comment.split_once(": ") else {
                continue;
            };
            let value = value.trim_end_matches('\r').to_owned();
            match key {
                "file" => case.file = value,
                "exit" => case.exit = value.parse().unwrap(),
                "reports" => case.reports.push(value),
                "about" => case.about.push(value),
                "case" | "expect" => {}
                other => panic!("{}: unknown header key {other:?}", case.name),
            }
        }
        assert!(
            case.exit == 0 || case.exit == 3,
            "{}: the header must say `# exit: 0` or `# exit: 3`",
            case.name
        );
        case.bytes = bytes;
        case
    }

    /// Whether a probe from `from` to `to` is about a pod the case may change.
    pub fn about(&self, from: &str, to: &str) -> bool {
        self.about.iter().any(|p| p == from || p == to)
    }
}

/// The cases of the corpus in `corpus`, in name order.
pub fn cases(corpus: &Path) -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus.join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| Case::load(p)).collect()
}
