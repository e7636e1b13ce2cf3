//! KServe V2 over gRPC (`inference.GRPCInferenceService`) against the real server with the
//! generated tonic client: health, metadata, config, statistics, index, raw and typed
//! inference, classification, streaming, gzip and status codes.

mod support;

use std::collections::HashMap;

use resnet_serve::grpc::kserve::proto::{
    self, InferParameter, InferTensorContents, ModelInferRequest,
    grpc_inference_service_client::GrpcInferenceServiceClient,
    infer_parameter::ParameterChoice,
    model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
};
use support::{
    Repository, TestServer, assert_inference_within_total, image, slow_model_dir, start,
};
use tonic::Code;
use tonic::transport::Channel;

async fn client(server: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", server.server.grpc_address))
        .await
        .unwrap()
}

fn int_parameter(value: i64) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::Int64Param(value)),
    }
}

fn fp32_input(shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape,
        ..InferInputTensor::default()
    }
}

fn raw_request(tensor: &[f32], batch: i64) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "slow".into(),
        id: "req-1".into(),
        inputs: vec![fp32_input(vec![batch, 1, 28, 28])],
        raw_input_contents: vec![
            tensor
                .iter()
                .flat_map(|value| value.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ],
        ..ModelInferRequest::default()
    }
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_service_answers_like_triton() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--max-batch-size", "4"]).await;
    let mut client = client(&server).await;

    assert!(
        client
            .server_live(proto::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(proto::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = proto::ModelReadyRequest {
        name: "slow".into(),
        version: "1".into(),
    };
    assert!(client.model_ready(ready).await.unwrap().into_inner().ready);
    let metadata = client
        .server_metadata(proto::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.name, "resnet-serve");
    assert!(metadata.extensions.contains(&"classification".to_string()));
    let request = proto::ModelMetadataRequest {
        name: "slow".into(),
        version: String::new(),
    };
    let model = client.model_metadata(request).await.unwrap().into_inner();
    assert_eq!(
        (model.platform.as_str(), model.versions.clone()),
        ("onnxruntime_onnx", vec!["1".to_string()])
    );
    assert_eq!(model.inputs[0].shape, vec![-1, 1, 28, 28]);
    assert_eq!(model.outputs[0].shape, vec![-1, 10]);
    let request = proto::ModelConfigRequest {
        name: "slow".into(),
        version: String::new(),
    };
    let config = client
        .model_config(request)
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.max_batch_size, 4);
    assert_eq!(config.input[0].data_type, proto::DataType::TypeFp32 as i32);
    assert_eq!(config.input[0].dims, vec![1, 28, 28]);
    let index = client
        .repository_index(proto::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (index.models.len(), index.models[0].state.as_str()),
        (1, "READY")
    );

    // Raw FP32 in, raw logits out; typed contents in, typed logits out; the same numbers.
    let mut tensor = vec![0.0f32; 2 * 784];
    tensor[100] = 1.5;
    let response = client.model_infer(raw_request(&tensor, 2)).await.unwrap();
    // The stages' times in the response metadata, as REST sends them in a header.
    let timing = response
        .metadata()
        .get("server-timing")
        .expect("a server-timing entry")
        .to_str()
        .unwrap()
        .to_string();
    assert_inference_within_total(&timing);
    let response = response.into_inner();
    assert_eq!(
        (
            response.id.as_str(),
            response.model_name.as_str(),
            response.model_version.as_str()
        ),
        ("req-1", "slow", "1")
    );
    assert_eq!(response.outputs[0].shape, vec![2, 10]);
    let raw_logits = floats(&response.raw_output_contents[0]);
    let mut typed = fp32_input(vec![2, 1, 28, 28]);
    typed.contents = Some(InferTensorContents {
        fp32_contents: tensor.clone(),
        ..InferTensorContents::default()
    });
    let request = ModelInferRequest {
        model_name: "slow".into(),
        inputs: vec![typed],
        ..ModelInferRequest::default()
    };
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert!(response.raw_output_contents.is_empty());
    assert_eq!(
        response.outputs[0].contents.as_ref().unwrap().fp32_contents,
        raw_logits
    );

    // Encoded images as BYTES, with classification, priority and timeout parameters.
    let png = image("fashion-0-label9.png");
    let mut raw = (png.len() as u32).to_le_bytes().to_vec();
    raw.extend(&png);
    let request = ModelInferRequest {
        model_name: "slow".into(),
        parameters: HashMap::from([
            ("priority".into(), int_parameter(1)),
            ("timeout".into(), int_parameter(5_000_000)),
        ]),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..InferInputTensor::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "logits".into(),
            parameters: HashMap::from([("classification".into(), int_parameter(2))]),
        }],
        raw_input_contents: vec![raw.into()],
        ..ModelInferRequest::default()
    };
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(
        (
            response.outputs[0].datatype.as_str(),
            response.outputs[0].shape.clone()
        ),
        ("BYTES", vec![1, 2])
    );
    let strings = &response.raw_output_contents[0];
    let first_length = u32::from_le_bytes(strings[..4].try_into().unwrap()) as usize;
    let first = std::str::from_utf8(&strings[4..4 + first_length]).unwrap();
    let label = first.rsplit(':').next().unwrap();
    assert!(support::FASHION_LABELS.contains(&label), "{first}");

    // Statistics count what was served.
    let stats = client
        .model_statistics(proto::ModelStatisticsRequest {
            name: "slow".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let success = stats.model_stats[0]
        .inference_stats
        .as_ref()
        .unwrap()
        .success
        .unwrap();
    assert!(success.count >= 3, "{success:?}");

    // Errors: status codes per DESIGN §4.2.
    let mut unknown = raw_request(&tensor, 2);
    unknown.model_name = "nope".into();
    assert_eq!(
        client.model_infer(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    let too_big = raw_request(&vec![0.0; 5 * 784], 5);
    let error = client.model_infer(too_big).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("batch size 5 is outside 1..=4"),
        "{}",
        error.message()
    );
    let mut short = raw_request(&tensor, 2);
    short.raw_input_contents[0].truncate(10);
    let error = client.model_infer(short).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("has 10 bytes of data"),
        "{}",
        error.message()
    );
    let mut nan = tensor.clone();
    nan[3] = f32::NAN;
    assert_eq!(
        client
            .model_infer(raw_request(&nan, 2))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let load = proto::RepositoryModelLoadRequest {
        model_name: "slow".into(),
        ..Default::default()
    };
    assert_eq!(
        client.repository_model_load(load).await.unwrap_err().code(),
        Code::Unimplemented
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_answers_in_order_and_reports_errors_in_band_with_gzip() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--max-batch-size", "4"]).await;
    let mut client = client(&server)
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let tensor = vec![0.25f32; 784];
    let requests: Vec<ModelInferRequest> = (0..4)
        .map(|index| {
            let mut request = raw_request(&tensor, 1);
            request.id = format!("s{index}");
            if index == 2 {
                request.model_name = "nope".into();
            }
            request
        })
        .collect();
    let mut stream = client
        .model_stream_infer(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(answer) = stream.message().await.unwrap() {
        answers.push(answer);
    }
    let ids: Vec<&str> = answers
        .iter()
        .map(|answer| answer.infer_response.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, ["s0", "s1", "s2", "s3"]);
    assert!(
        answers[2].error_message.contains("unknown model `nope`"),
        "{}",
        answers[2].error_message
    );
    assert!(answers[0].error_message.is_empty());
    assert_eq!(
        answers[0]
            .infer_response
            .as_ref()
            .unwrap()
            .raw_output_contents,
        answers[3]
            .infer_response
            .as_ref()
            .unwrap()
            .raw_output_contents
    );
    server.stop().await;
}
