//! `resnet-train`: train a ResNet and export it to a model repository.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use clap::{Parser, Subcommand, ValueEnum};
use rand::SeedableRng;
use rand::rngs::StdRng;
use resnet_serve::train::card::{CardFacts, model_card};
use resnet_serve::train::data::{self, Augment, Dataset, Normalization};
use resnet_serve::train::model_dir::{self, Golden, ModelDirSpec};
use resnet_serve::train::optim::{Sgd, load_checkpoint};
use resnet_serve::train::params::Params;
use resnet_serve::train::resnet::{Arch, ResNet};
use resnet_serve::train::trainer::{self, Schedule, TrainConfig, TrainSummary};

/// Train ResNets with candle and export them as ONNX model directories.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model, checkpointing every epoch.
    Train(TrainArgs),
    /// Write a model directory (ONNX, config, labels, golden file, card).
    Export(ExportArgs),
    /// Time training steps on random data (forward, backward, update).
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Architecture.
    #[arg(long, default_value = "resnet20")]
    arch: Arch,
    /// Input channels.
    #[arg(long, default_value = "1")]
    channels: usize,
    /// Input side.
    #[arg(long, default_value = "28")]
    input: usize,
    /// Classes.
    #[arg(long, default_value = "10")]
    classes: usize,
    /// Images per step.
    #[arg(long, default_value = "128")]
    batch_size: usize,
    /// Timed steps.
    #[arg(long, default_value = "5")]
    steps: usize,
    /// Use candle's conv2d and its conv_transpose2d backward (the baseline).
    #[arg(long)]
    candle_conv: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DatasetKind {
    /// Fashion-MNIST, gzipped IDX (Debian `dataset-fashion-mnist`).
    FashionMnist,
    /// CIFAR-10 binary batches (`--data cifar-10-batches-bin`).
    Cifar10,
    /// An ImageFolder tree `--data root/<class>/<image>`.
    Folder,
}

#[derive(Debug, clap::Args)]
struct DataArgs {
    /// Which dataset.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    dataset: DatasetKind,
    /// Dataset directory (Fashion-MNIST defaults to Debian's location).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Side of the square images an ImageFolder is resized and cropped to.
    #[arg(long, default_value = "64")]
    image_size: u32,
    /// Channels for ImageFolder images: 1 (gray) or 3 (RGB).
    #[arg(long, default_value = "3")]
    channels: usize,
    /// Fraction of an ImageFolder held out as its test set.
    #[arg(long, default_value = "0.2")]
    folder_test_fraction: f64,
}

#[derive(Debug, clap::Args)]
struct TrainArgs {
    /// Architecture: resnet20/32/44/56/110 (CIFAR-style) or resnet18/34/50/101/152.
    #[arg(long, default_value = "resnet20")]
    arch: Arch,
    #[command(flatten)]
    data: DataArgs,
    /// Epochs in total (a resumed run continues up to this many).
    #[arg(long, default_value = "30")]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value = "128")]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value = "0.1")]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value = "0.9")]
    momentum: f64,
    /// Weight decay on conv and linear weights.
    #[arg(long, default_value = "1e-4")]
    weight_decay: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "step")]
    schedule: ScheduleArg,
    /// Linear warm-up, in epochs.
    #[arg(long, default_value = "0")]
    warmup_epochs: f64,
    /// Seed for initialisation, shuffling and augmentation.
    #[arg(long, default_value = "0")]
    seed: u64,
    /// Training images held out for per-epoch validation (0: validate on the test set).
    #[arg(long, default_value = "5000")]
    val_size: usize,
    /// Use only the first N training images (smoke runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Stop each epoch after N steps (smoke runs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Checkpoint directory (`last.safetensors`, `epoch-NNN.safetensors`, `train-summary.json`).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Continue from `<checkpoint-dir>/last.safetensors` if it exists.
    #[arg(long)]
    resume: bool,
    /// Hide the progress bars.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScheduleArg {
    Step,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Init {
    /// Weights from `--checkpoint`.
    Checkpoint,
    /// Untrained weights (benchmarks): ImageNet-layout config, no dataset needed.
    Random,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// Architecture the checkpoint was trained with.
    #[arg(long, default_value = "resnet20")]
    arch: Arch,
    /// Where the weights come from.
    #[arg(long, value_enum, default_value = "checkpoint")]
    init: Init,
    /// Checkpoint to export (`--init checkpoint`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Classes (`--init random`).
    #[arg(long, default_value = "1000")]
    classes: usize,
    /// Input side (`--init random`); the config resizes to 256/224 of it, like ImageNet.
    #[arg(long, default_value = "224")]
    input: usize,
    /// Seed for `--init random`.
    #[arg(long, default_value = "0")]
    seed: u64,
    /// Golden images to write.
    #[arg(long, default_value = "8")]
    golden: usize,
    /// Mark the model as the server's default.
    #[arg(long)]
    default: bool,
    /// Training command for the card when no train-summary.json sits next to the checkpoint.
    #[arg(long)]
    train_command: Option<String>,
    /// Skip measuring test accuracy for the model card.
    #[arg(long)]
    skip_eval: bool,
    /// Model directory to write, e.g. `models/fashion-resnet20`.
    #[arg(long)]
    output: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Train(args) => train(args),
        Command::Export(args) => export(args),
        Command::Bench(args) => bench(args),
    }
}

/// `(train, test, normalisation, display name)` for the chosen dataset.
fn load(
    args: &DataArgs,
    seed: u64,
) -> anyhow::Result<(Dataset, Dataset, Normalization, &'static str)> {
    Ok(match args.dataset {
        DatasetKind::FashionMnist => {
            let (train, test) = data::fashion_mnist(args.data.as_deref())?;
            (train, test, Normalization::fashion_mnist(), "Fashion-MNIST")
        }
        DatasetKind::Cifar10 => {
            let dir = args
                .data
                .as_deref()
                .context("--data <cifar-10-batches-bin> is required for cifar10")?;
            let (train, test) = data::cifar10(dir)?;
            (train, test, Normalization::cifar10(), "CIFAR-10")
        }
        DatasetKind::Folder => {
            let root = args
                .data
                .as_deref()
                .context("--data <root> is required for folder")?;
            let mut rng = StdRng::seed_from_u64(seed);
            let (train, test) = data::image_folder(
                root,
                args.image_size,
                args.channels,
                args.folder_test_fraction,
                &mut rng,
            )?;
            let normalization = Normalization::measure(&train);
            (train, test, normalization, "ImageFolder")
        }
    })
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let (mut train_set, test_set, normalization, dataset_name) = load(&args.data, args.seed)?;
    if let Some(limit) = args.limit {
        train_set = train_set.subset(&(0..limit.min(train_set.len())).collect::<Vec<_>>());
    }
    let (train_set, val_set) = if args.val_size > 0 {
        let (train, val) = train_set.split(args.val_size, &mut StdRng::seed_from_u64(args.seed));
        (train, Some(val))
    } else {
        (train_set, None)
    };
    let device = Device::Cpu;
    let mut params = Params::new(device.clone(), args.seed);
    let model = ResNet::new(
        args.arch,
        train_set.dims[0],
        train_set.classes.len(),
        &mut params,
    )?;
    tracing::info!(arch = %args.arch, parameters = params.parameter_count(), train = train_set.len(),
        val = val_set.as_ref().map_or(0, Dataset::len), test = test_set.len(), "training on {dataset_name}");
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        schedule: match args.schedule {
            ScheduleArg::Step => Schedule::Step,
            ScheduleArg::Cosine => Schedule::Cosine,
        },
        warmup_epochs: args.warmup_epochs,
        seed: args.seed,
        checkpoint_dir: args.checkpoint_dir.clone(),
        resume: args.resume,
        max_steps: args.max_steps,
        progress: !args.no_progress,
    };
    let augment = Augment::standard(train_set.dims[2]);
    let validation = val_set.as_ref().unwrap_or(&test_set);
    let summary_path = args
        .checkpoint_dir
        .as_ref()
        .map(|dir| dir.join("train-summary.json"));
    let mut summary = summary_path
        .as_deref()
        .and_then(TrainSummary::read)
        .unwrap_or(TrainSummary {
            command: command.clone(),
            arch: args.arch.to_string(),
            dataset: dataset_name.into(),
            epochs: args.epochs,
            test_accuracy: None,
            images_per_second: 0.0,
            date: model_dir::today(),
            reports: Vec::new(),
        });
    summary.command = command;
    summary.epochs = args.epochs;
    let mut write_error = None;
    trainer::train(
        &model,
        &params,
        &train_set,
        Some(validation),
        &normalization,
        augment,
        &config,
        |report| {
            tracing::info!(
                epoch = report.epoch,
                loss = report.loss,
                train_accuracy = report.train_accuracy,
                val_accuracy = report.val_accuracy,
                images_per_second = report.images_per_second,
                seconds = report.seconds,
                lr = report.lr,
                "epoch done"
            );
            summary.record(report);
            if let Some(path) = &summary_path
                && let Err(error) = summary.write(path)
            {
                write_error = Some(error);
            }
        },
    )?;
    if let Some(error) = write_error {
        return Err(error.into());
    }
    let test_accuracy = trainer::evaluate(&model, &test_set, &normalization, &device)?;
    tracing::info!(
        test_accuracy,
        "final test accuracy ({} images)",
        test_set.len()
    );
    summary.test_accuracy = Some(test_accuracy);
    if let Some(path) = &summary_path {
        summary.write(path)?;
    }
    println!("test accuracy: {:.2}%", test_accuracy * 100.0);
    Ok(())
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let device = Device::Cpu;
    if args.init == Init::Random {
        let mut params = Params::new(device, args.seed);
        let model = ResNet::new(args.arch, 3, args.classes, &mut params)?;
        // A 256×256 synthetic golden image exercises the server's RGB resize + crop path.
        let resize = (args.input * 256 / 224) as u32;
        let side = resize as usize;
        let pixels = (0..2 * 3 * side * side)
            .map(|i| ((i * 7 + i / side * 3) % 251) as u8)
            .collect();
        let classes: Vec<String> = (0..args.classes)
            .map(|class| format!("class_{class}"))
            .collect();
        let images = Dataset {
            pixels,
            labels: vec![0, 0],
            dims: [3, side, side],
            classes: classes.clone(),
        };
        let spec = ModelDirSpec {
            input_dims: [3, args.input, args.input],
            resize_shorter: resize,
            normalization: Normalization::imagenet(),
            labels: classes,
            default: args.default,
            golden: Some(Golden {
                images: &images,
                indices: vec![0, 1],
            }),
            card: format!(
                "# {} (random weights)\n\nAn untrained ImageNet-layout {} ({} parameters, {} classes, input \
                 [N,3,{},{}]) for benchmarks only; its predictions mean nothing.\n\nWritten by `{}` on {}.\n",
                args.arch,
                args.arch,
                params.parameter_count(),
                args.classes,
                args.input,
                args.input,
                std::env::args().collect::<Vec<_>>().join(" "),
                model_dir::today()
            ),
        };
        model_dir::write_model_dir(&model, &spec, &args.output)?;
        println!("wrote {}", args.output.display());
        return Ok(());
    }
    let checkpoint = args
        .checkpoint
        .as_deref()
        .context("--checkpoint is required with --init checkpoint")?;
    let (_, test_set, normalization, dataset_name) = load(&args.data, args.seed)?;
    let mut params = Params::new(device.clone(), 0);
    let model = ResNet::new(
        args.arch,
        test_set.dims[0],
        test_set.classes.len(),
        &mut params,
    )?;
    let progress = load_checkpoint(checkpoint, &params, &mut Sgd::new(0.0, 0.0))?;
    let accuracy = if args.skip_eval {
        None
    } else {
        Some(trainer::evaluate(
            &model,
            &test_set,
            &normalization,
            &device,
        )?)
    };
    let summary = read_summary(checkpoint);
    let side = test_set.dims[2];
    let card = model_card(&CardFacts {
        arch: args.arch,
        parameters: params.parameter_count(),
        dataset: dataset_name,
        epochs: progress.epoch,
        test_accuracy: accuracy,
        summary: summary.as_ref(),
        train_command: args.train_command.as_deref(),
        test_set: &test_set,
        normalization: &normalization,
        export_command: &std::env::args().collect::<Vec<_>>().join(" "),
    });
    let spec = ModelDirSpec {
        input_dims: test_set.dims,
        resize_shorter: side as u32,
        normalization,
        labels: test_set.classes.clone(),
        default: args.default,
        golden: Some(Golden {
            images: &test_set,
            indices: (0..args.golden.min(test_set.len())).collect(),
        }),
        card,
    };
    model_dir::write_model_dir(&model, &spec, &args.output)?;
    println!(
        "wrote {} (test accuracy {})",
        args.output.display(),
        accuracy.map_or("not measured".into(), |a| format!("{:.2}%", a * 100.0))
    );
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    resnet_serve::train::conv::use_candle_conv(args.candle_conv);
    let mut params = Params::new(Device::Cpu, 0);
    let model = ResNet::new(args.arch, args.channels, args.classes, &mut params)?;
    let dims = [args.channels, args.input, args.input];
    let times =
        resnet_serve::train::bench::benchmark(&model, &params, dims, args.batch_size, args.steps)?;
    let conv = if args.candle_conv {
        "candle conv2d"
    } else {
        "gemm conv2d"
    };
    println!(
        "{} {dims:?} batch {} ({conv}): forward {:.3} s, backward {:.3} s, update {:.3} s per step; {:.1} images/s",
        args.arch,
        args.batch_size,
        times.forward,
        times.backward,
        times.update,
        times.images_per_second
    );
    Ok(())
}

fn read_summary(checkpoint: &Path) -> Option<TrainSummary> {
    TrainSummary::read(&checkpoint.parent()?.join("train-summary.json"))
}
