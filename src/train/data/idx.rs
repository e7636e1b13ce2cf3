//! Fashion-MNIST from gzipped IDX files (Debian package `dataset-fashion-mnist`).

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::Dataset;
use crate::train::TrainError;

/// Where Debian's `dataset-fashion-mnist` installs the files.
pub const FASHION_MNIST_DIRS: [&str; 2] = [
    "/usr/share/datasets/fashion-mnist",
    "/usr/share/fashion-mnist",
];

/// Fashion-MNIST's class names; index = class.
pub const FASHION_MNIST_LABELS: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Parses an IDX file (gzipped or not): returns its dimensions and u8 payload.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), TrainError> {
    let raw = std::fs::read(path).map_err(|source| TrainError::io(path, source))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut bytes = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut bytes)
            .map_err(|source| TrainError::io(path, source))?;
        bytes
    } else {
        raw
    };
    let bad =
        |why: &str| TrainError::Data(format!("{}: not an IDX u8 file ({why})", path.display()));
    let (&[0, 0, kind, rank], rest) = (
        bytes.get(..4).ok_or_else(|| bad("too short"))?,
        bytes.get(4..).unwrap_or_default(),
    ) else {
        return Err(bad("bad magic"));
    };
    if kind != 0x08 {
        return Err(bad("element type is not u8"));
    }
    let rank = usize::from(rank);
    let header = rest
        .get(..4 * rank)
        .ok_or_else(|| bad("truncated header"))?;
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|chunk| u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize)
        .collect();
    let payload = rest.get(4 * rank..).unwrap_or_default();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
        .ok_or_else(|| bad("size overflow"))?;
    if payload.len() != expected {
        return Err(bad(&format!(
            "{} payload bytes for dims {dims:?}",
            payload.len()
        )));
    }
    Ok((dims, payload.to_vec()))
}

/// Finds the directory holding `train-images-idx3-ubyte.gz`: `dir` if given, else Debian's.
pub fn locate(dir: Option<&Path>) -> Result<PathBuf, TrainError> {
    let candidates: Vec<PathBuf> = match dir {
        Some(dir) => vec![dir.to_path_buf()],
        None => FASHION_MNIST_DIRS.iter().map(PathBuf::from).collect(),
    };
    candidates
        .into_iter()
        .find(|dir| dir.join("t10k-images-idx3-ubyte.gz").exists())
        .ok_or_else(|| {
            TrainError::Data(format!(
                "Fashion-MNIST not found in {}; install the Debian package `dataset-fashion-mnist` \
             (apt-get install dataset-fashion-mnist) or pass --data <dir with *-ubyte.gz>",
                dir.map_or_else(
                    || FASHION_MNIST_DIRS.join(" or "),
                    |dir| dir.display().to_string()
                )
            ))
        })
}

/// Loads one split (`train` or `t10k`) from `dir`.
pub fn load_split(dir: &Path, split: &str) -> Result<Dataset, TrainError> {
    let (image_dims, pixels) = read_idx(&dir.join(format!("{split}-images-idx3-ubyte.gz")))?;
    let (label_dims, labels) = read_idx(&dir.join(format!("{split}-labels-idx1-ubyte.gz")))?;
    let &[count, height, width] = image_dims.as_slice() else {
        return Err(TrainError::Data(format!(
            "{split} images have dims {image_dims:?}, expected [N, H, W]"
        )));
    };
    if label_dims != [count] {
        return Err(TrainError::Data(format!(
            "{count} {split} images but label dims {label_dims:?}"
        )));
    }
    let dataset = Dataset {
        pixels,
        labels: labels.into_iter().map(u32::from).collect(),
        dims: [1, height, width],
        classes: FASHION_MNIST_LABELS
            .iter()
            .map(|label| label.to_string())
            .collect(),
    };
    dataset.validate(split)?;
    Ok(dataset)
}

/// Fashion-MNIST's `(train, test)` sets from `dir` or Debian's install location.
pub fn fashion_mnist(dir: Option<&Path>) -> Result<(Dataset, Dataset), TrainError> {
    let dir = locate(dir)?;
    Ok((load_split(&dir, "train")?, load_split(&dir, "t10k")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/fashion-mnist")
    }

    #[test]
    fn reads_the_committed_fixture() {
        let test = load_split(&fixtures(), "t10k").unwrap();
        assert_eq!(test.dims, [1, 28, 28]);
        assert_eq!(test.len(), 16);
        // The first Fashion-MNIST test image is an ankle boot.
        assert_eq!(test.labels[0], 9);
        assert_eq!(test.classes[9], "Ankle boot");
    }

    #[test]
    fn a_missing_directory_names_the_debian_package() {
        let error = fashion_mnist(Some(Path::new("/nonexistent")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("dataset-fashion-mnist"), "{error}");
    }

    #[test]
    fn rejects_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad");
        std::fs::write(&path, [0, 0, 8, 1, 0, 0, 0, 5, 1, 2]).unwrap();
        assert!(read_idx(&path).unwrap_err().to_string().contains("payload"));
        std::fs::write(&path, [1, 2]).unwrap();
        assert!(read_idx(&path).is_err());
    }
}
