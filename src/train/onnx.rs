//! Writes a [`ResNet`] as an ONNX graph (opset 17), batch norm folded into the convolutions.

use candle_core::{DType, Tensor};
use prost::Message;

use super::TrainError;
use super::layers::{Block, ConvBn};
use super::resnet::ResNet;

/// Generated prost messages for our subset of `onnx.proto`.
#[allow(missing_docs, clippy::all, reason = "generated code")]
pub mod proto {
    tonic::include_proto!("onnx");
}

use proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
};

/// The ONNX opset the graph is written for.
pub const OPSET: i64 = 17;
/// The IR version matching [`OPSET`] (ONNX 1.12).
pub const IR_VERSION: i64 = 8;
/// Name of the graph input, `[N, C, H, W]` float.
pub const INPUT_NAME: &str = "input";
/// Name of the graph output, `[N, classes]` float logits.
pub const OUTPUT_NAME: &str = "logits";

const FLOAT: i32 = 1;
const ATTRIBUTE_INT: i32 = 2;
const ATTRIBUTE_INTS: i32 = 7;

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.to_vec(),
        r#type: ATTRIBUTE_INTS,
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: value,
        r#type: ATTRIBUTE_INT,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|dim| tensor_shape_proto::Dimension {
            value: Some(match dim {
                Some(size) => tensor_shape_proto::dimension::Value::DimValue(*size as i64),
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
            }),
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: FLOAT,
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
        }),
        ..Default::default()
    }
}

/// Accumulates nodes and initialisers with unique value names.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next_id: usize,
}

impl Graph {
    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.next_id += 1;
        let output = format!("{}_{}", op.to_lowercase(), self.next_id);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|input| input.to_string()).collect(),
            output: vec![output.clone()],
            name: format!("{op}_{}", self.next_id),
            op_type: op.into(),
            attribute: attributes,
            ..Default::default()
        });
        output
    }

    fn initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw_data = values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&dim| dim as i64).collect(),
            data_type: FLOAT,
            name: name.into(),
            raw_data,
            ..Default::default()
        });
        name.into()
    }

    /// Conv with BN folded in: `w' = w·γ/√(σ²+ε)`, `b' = β − μ·γ/√(σ²+ε)`.
    fn conv_bn(&mut self, layer: &ConvBn, input: &str) -> Result<String, TrainError> {
        let dims = layer.weight.dims().to_vec();
        let (Some(&filters), Some(&kernel)) = (dims.first(), dims.last()) else {
            return Err(TrainError::Export(format!(
                "{}: weight dims {dims:?}",
                layer.name
            )));
        };
        let vector = |tensor: &Tensor| -> Result<Vec<f64>, TrainError> {
            Ok(tensor.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
        };
        let (gamma, beta) = layer.bn.weight_and_bias();
        let (gamma, beta) = (vector(gamma)?, vector(beta)?);
        let (mean, var) = (
            vector(layer.bn.running_mean())?,
            vector(layer.bn.running_var())?,
        );
        let weight = vector(&layer.weight)?;
        let per_filter = weight.len() / filters.max(1);
        let mut folded = Vec::with_capacity(weight.len());
        let mut bias = Vec::with_capacity(filters);
        for filter in 0..filters {
            let (Some(g), Some(b), Some(m), Some(v)) = (
                gamma.get(filter),
                beta.get(filter),
                mean.get(filter),
                var.get(filter),
            ) else {
                return Err(TrainError::Export(format!(
                    "{}: BN has fewer than {filters} channels",
                    layer.name
                )));
            };
            let scale = g / (v + layer.bn.eps()).sqrt();
            let row = weight
                .get(filter * per_filter..(filter + 1) * per_filter)
                .unwrap_or_default();
            folded.extend(row.iter().map(|w| (w * scale) as f32));
            bias.push((b - m * scale) as f32);
        }
        let w = self.initializer(&format!("{}.weight", layer.name), &dims, &folded);
        let b = self.initializer(&format!("{}.bias", layer.name), &[filters], &bias);
        let (k, s, p) = (kernel as i64, layer.stride as i64, layer.padding as i64);
        let attributes = vec![
            ints("kernel_shape", &[k, k]),
            ints("strides", &[s, s]),
            ints("pads", &[p, p, p, p]),
        ];
        Ok(self.node("Conv", &[input, &w, &b], attributes))
    }

    fn block(&mut self, block: &Block, input: &str) -> Result<String, TrainError> {
        let (residual, downsample) = match block {
            Block::Basic(block) => {
                let y = self.conv_bn(&block.conv1, input)?;
                let y = self.node("Relu", &[&y], vec![]);
                (self.conv_bn(&block.conv2, &y)?, &block.downsample)
            }
            Block::Bottleneck(block) => {
                let y = self.conv_bn(&block.conv1, input)?;
                let y = self.node("Relu", &[&y], vec![]);
                let y = self.conv_bn(&block.conv2, &y)?;
                let y = self.node("Relu", &[&y], vec![]);
                (self.conv_bn(&block.conv3, &y)?, &block.downsample)
            }
        };
        let shortcut = match downsample {
            Some(projection) => self.conv_bn(projection, input)?,
            None => input.to_string(),
        };
        let sum = self.node("Add", &[&residual, &shortcut], vec![]);
        Ok(self.node("Relu", &[&sum], vec![]))
    }
}

/// Serialises `model` in eval mode for inputs `[N, C, H, W]` with `N` dynamic.
pub fn to_onnx(model: &ResNet, input_dims: [usize; 3]) -> Result<Vec<u8>, TrainError> {
    let mut graph = Graph::default();
    let x = graph.conv_bn(&model.stem, INPUT_NAME)?;
    let mut x = graph.node("Relu", &[&x], vec![]);
    if model.max_pool {
        let attributes = vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            ints("pads", &[1, 1, 1, 1]),
        ];
        x = graph.node("MaxPool", &[&x], attributes);
    }
    for block in model.stages.iter().flatten() {
        x = graph.block(block, &x)?;
    }
    let pooled = graph.node("GlobalAveragePool", &[&x], vec![]);
    let flat = graph.node("Flatten", &[&pooled], vec![int("axis", 1)]);
    let (classes, features) = model.fc.weight.dims2()?;
    let weight: Vec<f32> = model.fc.weight.flatten_all()?.to_vec1()?;
    let bias: Vec<f32> = model.fc.bias.to_vec1()?;
    let w = graph.initializer("fc.weight", &[classes, features], &weight);
    let b = graph.initializer("fc.bias", &[classes], &bias);
    graph.node("Gemm", &[&flat, &w, &b], vec![int("transB", 1)]);
    if let Some(last) = graph.nodes.last_mut() {
        last.output = vec![OUTPUT_NAME.into()];
    }
    let [channels, height, width] = input_dims;
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "resnet-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{} exported by resnet-train, batch norm folded", model.arch),
        graph: Some(GraphProto {
            node: graph.nodes,
            name: model.arch.to_string(),
            initializer: graph.initializers,
            input: vec![value_info(
                INPUT_NAME,
                &[None, Some(channels), Some(height), Some(width)],
            )],
            output: vec![value_info(OUTPUT_NAME, &[None, Some(classes)])],
            ..Default::default()
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::train::params::Params;
    use crate::train::resnet::Arch;

    #[test]
    fn graph_has_named_io_dynamic_batch_and_folded_bn() {
        let mut params = Params::new(Device::Cpu, 0);
        let model = ResNet::new(Arch::ImageNet(50), 3, 1000, &mut params).unwrap();
        let bytes = to_onnx(&model, [3, 224, 224]).unwrap();
        let decoded = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = decoded.graph.unwrap();
        let convs = graph
            .node
            .iter()
            .filter(|node| node.op_type == "Conv")
            .count();
        assert_eq!(convs, 53, "torchvision's ResNet-50 has 53 convolutions");
        assert!(
            graph
                .node
                .iter()
                .all(|node| node.op_type != "BatchNormalization")
        );
        assert_eq!(graph.input[0].name, INPUT_NAME);
        assert_eq!(graph.output[0].name, OUTPUT_NAME);
        assert_eq!(graph.node.last().unwrap().output, [OUTPUT_NAME]);
        assert_eq!(decoded.opset_import[0].version, OPSET);
        let values: usize = graph
            .initializer
            .iter()
            .map(|tensor| tensor.raw_data.len() / 4)
            .sum();
        // Folding drops BN's 4 vectors per conv and adds one bias: fewer values than parameters.
        assert!(values < params.parameter_count());
    }
}
