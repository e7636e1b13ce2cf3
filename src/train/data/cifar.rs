//! CIFAR-10 from its binary batches (`data_batch_{1..5}.bin`, `test_batch.bin`).

use std::path::Path;

use super::Dataset;
use crate::train::TrainError;

const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const RECORD: usize = 1 + 3 * 32 * 32;

fn load(dir: &Path, files: &[String]) -> Result<Dataset, TrainError> {
    let mut dataset = Dataset {
        pixels: Vec::new(),
        labels: Vec::new(),
        dims: [3, 32, 32],
        classes: CLASSES.iter().map(|class| class.to_string()).collect(),
    };
    for file in files {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|source| TrainError::io(&path, source))?;
        if bytes.len() % RECORD != 0 {
            return Err(TrainError::Data(format!(
                "{}: not a CIFAR-10 binary batch",
                path.display()
            )));
        }
        for record in bytes.chunks_exact(RECORD) {
            let (&label, image) = record.split_first().unwrap_or((&0, &[]));
            dataset.labels.push(u32::from(label));
            dataset.pixels.extend_from_slice(image);
        }
    }
    dataset.validate("cifar-10")?;
    Ok(dataset)
}

/// CIFAR-10's `(train, test)` sets from a `cifar-10-batches-bin` directory.
pub fn cifar10(dir: &Path) -> Result<(Dataset, Dataset), TrainError> {
    let train: Vec<String> = (1..=5)
        .map(|index| format!("data_batch_{index}.bin"))
        .collect();
    Ok((
        load(dir, &train)?,
        load(dir, &["test_batch.bin".to_string()])?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_as_label_then_planes() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = vec![7u8];
        record.extend((0..3 * 1024).map(|i| (i / 1024) as u8));
        for index in 1..=5 {
            std::fs::write(dir.path().join(format!("data_batch_{index}.bin")), &record).unwrap();
        }
        std::fs::write(
            dir.path().join("test_batch.bin"),
            [record.clone(), record].concat(),
        )
        .unwrap();
        let (train, test) = cifar10(dir.path()).unwrap();
        assert_eq!((train.len(), test.len()), (5, 2));
        assert_eq!(train.labels[0], 7);
        assert_eq!(train.image(0).unwrap()[2048], 2);
        std::fs::write(dir.path().join("test_batch.bin"), [1, 2, 3]).unwrap();
        assert!(cifar10(dir.path()).is_err());
    }
}
