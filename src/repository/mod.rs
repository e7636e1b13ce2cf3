//! The model repository on disk: one directory per model with `config.toml`, `labels.txt`,
//! `golden.json` and numbered version directories holding `model.onnx` (DESIGN §6).

pub mod config;
pub mod golden;
pub mod spec;

use std::path::{Path, PathBuf};

use config::{ModelConfig, VersionPolicy};

/// A model directory as found on disk, before anything is loaded.
#[derive(Debug)]
pub struct ModelDir {
    /// The model's name (its directory name).
    pub name: String,
    /// The directory.
    pub path: PathBuf,
    /// The parsed `config.toml` (default when absent), or why it cannot be read.
    pub config: Result<ModelConfig, String>,
    /// Numbered version directories present, ascending.
    pub versions: Vec<u64>,
}

impl ModelDir {
    /// The versions the config's policy selects.
    pub fn served_versions(&self) -> Vec<u64> {
        let policy = self
            .config
            .as_ref()
            .ok()
            .and_then(|config| config.version_policy.clone())
            .unwrap_or_default();
        select_versions(&policy, &self.versions)
    }

    /// `<dir>/<version>/model.onnx`.
    pub fn model_file(&self, version: u64) -> PathBuf {
        self.path.join(version.to_string()).join("model.onnx")
    }

    /// Reads the labels file named in the config (default `labels.txt`); none if absent and
    /// not named.
    pub fn labels(&self, config: &ModelConfig) -> Result<Vec<String>, String> {
        let named = config.output.labels.as_deref();
        let path = self.path.join(named.unwrap_or("labels.txt"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .map(|line| line.trim_end().to_string())
                .collect()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && named.is_none() => {
                Ok(Vec::new())
            }
            Err(error) => Err(format!("{}: {error}", path.display())),
        }
    }
}

/// Applies a version policy to the versions present.
pub fn select_versions(policy: &VersionPolicy, available: &[u64]) -> Vec<u64> {
    match policy {
        VersionPolicy::All => available.to_vec(),
        VersionPolicy::Latest(count) => {
            available.iter().rev().take(*count).rev().copied().collect()
        }
        VersionPolicy::Specific(wanted) => available
            .iter()
            .filter(|version| wanted.contains(version))
            .copied()
            .collect(),
    }
}

/// Why the repository cannot be scanned.
#[derive(Debug, thiserror::Error)]
#[error("model repository `{path}`: {message}")]
pub struct ScanError {
    /// The repository root.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// Lists the model directories under `root`, sorted by name. Problems with one model (bad
/// config) are recorded in its entry; only an unreadable root is an error.
pub fn scan(root: &Path) -> Result<Vec<ModelDir>, ScanError> {
    let error = |message: String| ScanError {
        path: root.display().to_string(),
        message,
    };
    let entries = std::fs::read_dir(root).map_err(|io| error(io.to_string()))?;
    let mut models = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|io| error(io.to_string()))?;
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|name| name.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !path.is_dir() || name.starts_with('.') {
            continue;
        }
        let config_path = path.join("config.toml");
        let config = if config_path.exists() {
            ModelConfig::read(&config_path).map_err(|error| error.to_string())
        } else {
            Ok(ModelConfig::default())
        };
        let mut versions: Vec<u64> = std::fs::read_dir(&path)
            .map_err(|io| error(io.to_string()))?
            .filter_map(Result::ok)
            .filter(|entry| entry.path().is_dir())
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .collect();
        versions.sort_unstable();
        models.push(ModelDir {
            name,
            path,
            config,
            versions,
        });
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// Picks the default model: `requested` if given, else the one whose config says
/// `default = true`, else the only model.
pub fn default_model(models: &[ModelDir], requested: Option<&str>) -> Result<String, String> {
    if let Some(name) = requested {
        return if models.iter().any(|model| model.name == name) {
            Ok(name.to_string())
        } else {
            Err(format!("--default-model `{name}` is not in the repository"))
        };
    }
    let marked: Vec<&str> = models
        .iter()
        .filter(|model| {
            model
                .config
                .as_ref()
                .is_ok_and(|config| config.default == Some(true))
        })
        .map(|model| model.name.as_str())
        .collect();
    match (marked.as_slice(), models) {
        ([one], _) => Ok(one.to_string()),
        ([], [only]) => Ok(only.name.clone()),
        ([], []) => Err("the model repository holds no models".into()),
        ([], _) => {
            Err("several models and none marked `default = true`; pass --default-model".into())
        }
        (many, _) => Err(format!(
            "several models marked `default = true`: {many:?}; pass --default-model"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_policies_select_versions() {
        let available = [1, 2, 5];
        assert_eq!(
            select_versions(&VersionPolicy::Latest(1), &available),
            vec![5]
        );
        assert_eq!(
            select_versions(&VersionPolicy::Latest(2), &available),
            vec![2, 5]
        );
        assert_eq!(
            select_versions(&VersionPolicy::All, &available),
            vec![1, 2, 5]
        );
        assert_eq!(
            select_versions(&VersionPolicy::Specific(vec![1, 3]), &available),
            vec![1]
        );
    }

    #[test]
    fn scans_models_versions_and_bad_configs() {
        let root = tempfile::tempdir().unwrap();
        for path in ["a/1", "a/3", "a/notes", "b/2"] {
            std::fs::create_dir_all(root.path().join(path)).unwrap();
        }
        std::fs::write(root.path().join("a/config.toml"), "default = true\n").unwrap();
        std::fs::write(root.path().join("b/config.toml"), "bogus = 1\n").unwrap();
        let models = scan(root.path()).unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].versions, vec![1, 3]);
        assert_eq!(models[0].served_versions(), vec![3]);
        assert!(models[1].config.as_ref().unwrap_err().contains("bogus"));
        assert_eq!(default_model(&models, None).unwrap(), "a");
        assert!(default_model(&models, Some("c")).is_err());
    }
}
