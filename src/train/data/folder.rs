//! An ImageFolder tree, `root/<class>/<image>`, resized and centre-cropped to a square.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rand::rngs::StdRng;

use super::Dataset;
use crate::train::TrainError;

fn entries(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| TrainError::io(dir, source))? {
        paths.push(entry.map_err(|source| TrainError::io(dir, source))?.path());
    }
    paths.sort();
    Ok(paths)
}

/// Loads `root/<class>/<image>` (classes sorted by name, as torchvision), each image resized so
/// its shorter side is `size`, centre-cropped to `size`×`size`, in `channels` (1 = gray, 3 = RGB);
/// then holds out `val_fraction` of the images (seeded shuffle) as `(train, val)`.
pub fn image_folder(
    root: &Path,
    size: u32,
    channels: usize,
    val_fraction: f64,
    rng: &mut StdRng,
) -> Result<(Dataset, Dataset), TrainError> {
    let class_dirs: Vec<PathBuf> = entries(root)?
        .into_iter()
        .filter(|path| path.is_dir())
        .collect();
    if class_dirs.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no class directories",
            root.display()
        )));
    }
    let side = size as usize;
    let mut dataset = Dataset {
        pixels: Vec::new(),
        labels: Vec::new(),
        dims: [channels, side, side],
        classes: Vec::new(),
    };
    for (class, dir) in class_dirs.iter().enumerate() {
        dataset.classes.push(
            dir.file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        for path in entries(dir)?.into_iter().filter(|path| path.is_file()) {
            let image = image::open(&path)?;
            let (width, height) = (image.width().max(1), image.height().max(1));
            let scale = f64::from(size) / f64::from(width.min(height));
            let resized = image.resize_exact(
                ((f64::from(width) * scale) as u32).max(size),
                ((f64::from(height) * scale) as u32).max(size),
                FilterType::Triangle,
            );
            let left = (resized.width() - size) / 2;
            let top = (resized.height() - size) / 2;
            let cropped = resized.crop_imm(left, top, size, size);
            if channels == 1 {
                dataset
                    .pixels
                    .extend_from_slice(cropped.to_luma8().as_raw());
            } else {
                // Planar CHW from interleaved RGB.
                let rgb = cropped.to_rgb8();
                for channel in 0..3 {
                    dataset
                        .pixels
                        .extend(rgb.pixels().map(|pixel| pixel.0[channel]));
                }
            }
            dataset.labels.push(class as u32);
        }
    }
    dataset.validate(&root.display().to_string())?;
    let val = (dataset.len() as f64 * val_fraction).round() as usize;
    Ok(dataset.split(val, rng))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn loads_the_committed_tree_with_a_split() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/image-folder");
        let mut rng = StdRng::seed_from_u64(0);
        let (train, val) = image_folder(&root, 8, 3, 0.25, &mut rng).unwrap();
        assert_eq!(train.classes, ["circle", "square"]);
        assert_eq!((train.len(), val.len()), (6, 2));
        assert_eq!(train.dims, [3, 8, 8]);
        let (gray, _) = image_folder(&root, 8, 1, 0.0, &mut rng).unwrap();
        assert_eq!((gray.len(), gray.dims), (8, [1, 8, 8]));
        assert!(image_folder(&root.join("circle"), 8, 1, 0.0, &mut rng).is_err());
    }
}
