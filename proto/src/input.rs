//! Inputs mounted in a task: where a task may see them. Checked by the host at submit, by the
//! CLI before it uploads anything, and by the agent before it builds a task's mounts, with one
//! set of rules.

use crate::pb;

/// Most inputs one task mounts.
pub const MAX_INPUTS_PER_TASK: usize = 16;
/// Longest guest path of an input, in bytes.
pub const MAX_GUEST_PATH_BYTES: usize = 256;
/// The directory inputs are mounted in when their path is not given.
pub const DEFAULT_INPUT_DIR: &str = "/input";
/// Where a task's output directory appears: no input may be put there.
pub const OUTPUT_DIR: &str = "/output";

/// The default guest path of a file named `file_name`: `/input/<file name>`.
pub fn default_guest_path(file_name: &str) -> String {
    format!("{DEFAULT_INPUT_DIR}/{file_name}")
}

/// What is wrong with `path` as an input's guest path, if anything: absolute, at most
/// [`MAX_GUEST_PATH_BYTES`], in a directory (not `/` itself), with no empty, `.` or `..`
/// component, no control characters, and not in the output directory.
pub fn guest_path_problem(path: &str) -> Option<String> {
    let shown = |why: &str| Some(format!("input path {path:?} {why}"));
    if path.len() > MAX_GUEST_PATH_BYTES {
        return shown(&format!("is over {MAX_GUEST_PATH_BYTES} bytes"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return shown("is not absolute (as /input/data.csv)");
    };
    if path.chars().any(char::is_control) {
        return shown("holds a control character");
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return shown("has an empty, `.` or `..` component");
    }
    if parts.len() < 2 {
        return shown("is not in a directory (as /input/data.csv)");
    }
    if parts[0] == OUTPUT_DIR.trim_start_matches('/') {
        return shown(&format!("is in the output directory {OUTPUT_DIR}"));
    }
    None
}

/// What is wrong with a task's inputs, if anything: at most [`MAX_INPUTS_PER_TASK`], each a
/// sha256 (lower-case hex) at a good path, no path twice and none inside another's file.
pub fn mounts_problem(inputs: &[pb::InputMount]) -> Option<String> {
    if inputs.len() > MAX_INPUTS_PER_TASK {
        return Some(format!(
            "{} inputs: a task mounts at most {MAX_INPUTS_PER_TASK}",
            inputs.len()
        ));
    }
    for (i, input) in inputs.iter().enumerate() {
        if !is_sha256(&input.sha256) {
            return Some(format!(
                "input {:?} is not a sha256 (64 lower-case hex digits)",
                input.sha256.chars().take(80).collect::<String>()
            ));
        }
        if let Some(problem) = guest_path_problem(&input.path) {
            return Some(problem);
        }
        for other in &inputs[..i] {
            let (a, b) = (input.path.as_str(), other.path.as_str());
            if a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/")) {
                return Some(format!("inputs {b:?} and {a:?} overlap"));
            }
        }
    }
    None
}

/// Whether `text` is a sha256 as Corral writes them: 64 lower-case hex digits.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(sha: char, path: &str) -> pb::InputMount {
        pb::InputMount {
            sha256: sha.to_string().repeat(64),
            path: path.into(),
        }
    }

    #[test]
    fn guest_paths_are_absolute_plain_and_outside_the_output_dir() {
        assert_eq!(guest_path_problem("/input/iris.csv"), None);
        assert_eq!(guest_path_problem("/data/a/b.bin"), None);
        for bad in [
            "input/x",
            "/x",
            "/",
            "/input/",
            "/input//x",
            "/input/../etc",
            "/input/./x",
            "/output/x",
            "/in\nput/x",
        ] {
            assert!(guest_path_problem(bad).is_some(), "{bad:?} passed");
        }
        let long = format!("/input/{}", "a".repeat(MAX_GUEST_PATH_BYTES));
        assert!(guest_path_problem(&long).unwrap().contains("bytes"));
    }

    #[test]
    fn a_task_mounts_few_distinct_inputs_by_sha256() {
        assert_eq!(
            mounts_problem(&[mount('a', "/input/x"), mount('b', "/input/y")]),
            None
        );
        let twice = mounts_problem(&[mount('a', "/input/x"), mount('b', "/input/x")]);
        assert!(twice.unwrap().contains("overlap"));
        let inside = mounts_problem(&[mount('a', "/input/x"), mount('b', "/input/x/y")]);
        assert!(inside.unwrap().contains("overlap"));
        let upper = pb::InputMount {
            sha256: "A".repeat(64),
            path: "/input/x".into(),
        };
        assert!(mounts_problem(&[upper]).unwrap().contains("sha256"));
        let many: Vec<_> = (0..=MAX_INPUTS_PER_TASK)
            .map(|i| mount('a', &format!("/input/{i}")))
            .collect();
        assert!(mounts_problem(&many).unwrap().contains("at most"));
    }
}
