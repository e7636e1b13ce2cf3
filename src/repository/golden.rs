//! `golden.json`: real inputs and the logits the trainer computed for them, checked at load to
//! catch train/serve skew in preprocessing as well as in weights.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The golden file of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    /// Absolute tolerance.
    pub atol: f32,
    /// Relative tolerance.
    pub rtol: f32,
    /// The inputs.
    pub cases: Vec<GoldenCase>,
}

/// One golden input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenCase {
    /// Image file relative to the model directory.
    pub file: String,
    /// Its true class.
    pub label: usize,
    /// The trainer's eval-mode logits for it.
    pub logits: Vec<f32>,
}

impl Golden {
    /// Reads `golden.json`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
    }

    /// The first element where `actual` is outside `|a − e| ≤ atol + rtol·|e|`, if any.
    pub fn mismatch(&self, actual: &[f32], expected: &[f32]) -> Option<(usize, f32, f32)> {
        if actual.len() != expected.len() {
            return Some((actual.len().min(expected.len()), f32::NAN, f32::NAN));
        }
        actual
            .iter()
            .zip(expected)
            .enumerate()
            .find(|(_, (a, e))| {
                // NaN compares false, so it never counts as within tolerance.
                let within = (*a - *e).abs() <= self.atol + self.rtol * e.abs();
                !within
            })
            .map(|(index, (a, e))| (index, *a, *e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_absolute_plus_relative() {
        let golden = Golden {
            atol: 1e-4,
            rtol: 1e-3,
            cases: vec![],
        };
        assert_eq!(golden.mismatch(&[1.0005, 0.0], &[1.0, 0.0]), None);
        assert_eq!(
            golden.mismatch(&[1.0, 0.01], &[1.0, 0.0]),
            Some((1, 0.01, 0.0))
        );
        assert!(golden.mismatch(&[f32::NAN], &[0.0]).is_some());
        assert!(golden.mismatch(&[1.0], &[1.0, 2.0]).is_some());
    }

    #[test]
    fn parses_the_design_format() {
        let text = r#"{"atol": 1e-4, "rtol": 1e-3, "cases": [{"file": "golden/0.png", "label": 9, "logits": [0.5, -1.0]}]}"#;
        let golden: Golden = serde_json::from_str(text).unwrap();
        assert_eq!(golden.cases[0].label, 9);
    }
}
