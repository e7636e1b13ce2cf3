//! Micro-benchmarks of the request path's CPU work: JPEG decode, resize + crop + normalise,
//! the whole preprocessing of a typical photo (500×375) and a large one (4000×3000, with and
//! without DCT-domain scaling), batch assembly, and the batching policy.
//!
//! `cargo bench --bench preprocess`. The JPEGs are made from the cat photo fixture, quality
//! 90 with 4:2:0 chroma subsampling as cameras and phones write them (the large one also in
//! 4:4:4, which has twice the coefficients to entropy-decode), and saved to
//! `target/bench-images/` so `scripts/bench_preprocess.py` can time Pillow on the same bytes.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use resnet_serve::batcher::policy::{Decision, Limits, Policy, Queued};
use resnet_serve::preprocess::{
    ImageLimits, PreprocessSpec, decode_pixels, preprocess_encoded, preprocess_pixels,
};
use resnet_serve::repository::config::{Color, Interpolation};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cat photo resized to `width`×`height`, as a quality-90 JPEG with `subsampling`, written
/// to `target/bench-images/{width}x{height}-{name}.jpg`.
fn photo(width: u32, height: u32, subsampling: turbojpeg::Subsamp, name: &str) -> Vec<u8> {
    let source = image::open(root().join("tests/fixtures/images/cat-451x300.jpg")).unwrap();
    let resized = source
        .resize_exact(width, height, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let pixels = turbojpeg::Image {
        pixels: resized.as_raw().as_slice(),
        width: width as usize,
        pitch: width as usize * 3,
        height: height as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    let jpeg = turbojpeg::compress(pixels, 90, subsampling)
        .unwrap()
        .to_vec();
    let dir = root().join("target/bench-images");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{width}x{height}-{name}.jpg")), &jpeg).unwrap();
    jpeg
}

/// torchvision's ImageNet preprocessing: shorter side 256, centre crop 224, ImageNet mean/std.
fn imagenet(dct: bool) -> PreprocessSpec {
    PreprocessSpec {
        color: Color::Rgb,
        resize_shorter: 256,
        crop: [224, 224],
        interpolation: Interpolation::Bilinear,
        scale: 255.0,
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        jpeg_dct_scaling: dct,
    }
}

const LIMITS: ImageLimits = ImageLimits {
    max_pixels: 40_000_000,
    max_aspect_ratio: 32.0,
};

fn preprocessing(c: &mut Criterion) {
    let typical = photo(500, 375, turbojpeg::Subsamp::Sub2x2, "420");
    let large = photo(4000, 3000, turbojpeg::Subsamp::Sub2x2, "420");
    let large_444 = photo(4000, 3000, turbojpeg::Subsamp::None, "444");
    let spec = imagenet(false);
    let mut out = vec![0.0f32; spec.tensor_len()];

    c.bench_function("decode/500x375", |b| {
        b.iter(|| decode_pixels(black_box(&typical), &spec, &LIMITS).unwrap())
    });
    let pixels = decode_pixels(&typical, &spec, &LIMITS).unwrap();
    c.bench_function("resize_crop_normalise/500x375", |b| {
        b.iter(|| preprocess_pixels(black_box(&pixels), &spec, &mut out).unwrap())
    });
    c.bench_function("preprocess/500x375", |b| {
        b.iter(|| preprocess_encoded(black_box(&typical), &spec, &LIMITS, &mut out).unwrap())
    });
    let mut group = c.benchmark_group("large");
    group.sample_size(20);
    group.bench_function("preprocess/4000x3000", |b| {
        b.iter(|| preprocess_encoded(black_box(&large), &spec, &LIMITS, &mut out).unwrap())
    });
    let dct = imagenet(true);
    group.bench_function("preprocess/4000x3000-dct", |b| {
        b.iter(|| preprocess_encoded(black_box(&large), &dct, &LIMITS, &mut out).unwrap())
    });
    group.bench_function("preprocess/4000x3000-444-dct", |b| {
        b.iter(|| preprocess_encoded(black_box(&large_444), &dct, &LIMITS, &mut out).unwrap())
    });
    group.finish();
}

fn batching(c: &mut Criterion) {
    // What a worker does before inference: 32 images of 3×224×224 into one input.
    let tensors: Vec<Vec<f32>> = (0..32).map(|i| vec![i as f32; 3 * 224 * 224]).collect();
    let mut input = Vec::with_capacity(32 * 3 * 224 * 224);
    c.bench_function("batch_assembly/32x3x224x224", |b| {
        b.iter(|| {
            input.clear();
            for tensor in &tensors {
                input.extend_from_slice(black_box(tensor));
            }
            input.len()
        })
    });

    struct Job(Instant);
    impl Queued for Job {
        fn images(&self) -> usize {
            1
        }
        fn level(&self) -> usize {
            0
        }
        fn deadline(&self) -> Instant {
            self.0
        }
        fn is_cancelled(&self) -> bool {
            false
        }
    }
    let limits = Limits {
        max_batch_size: 32,
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: vec![],
        priority_levels: 1,
    };
    c.bench_function("policy/256_jobs_in_32_batches", |b| {
        b.iter(|| {
            let now = Instant::now();
            let mut policy = Policy::new(limits.clone());
            for i in 0..256u64 {
                policy.push(Job(now + Duration::from_millis(i % 17)), now);
            }
            let mut batches = 0;
            while let Decision::Run(batch) = policy.next(now) {
                batches += black_box(batch.len()).min(1);
            }
            batches
        })
    });
}

criterion_group!(benches, preprocessing, batching);
criterion_main!(benches);
