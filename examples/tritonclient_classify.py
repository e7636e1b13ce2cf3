# Classify a Fashion-MNIST item with NVIDIA's tritonclient over HTTP and gRPC (KServe V2 BYTES input,
# classification extension). Start the server first: scripts/serve.sh
import numpy as np
import tritonclient.http as httpclient
import tritonclient.grpc as grpcclient

png = open("tests/fixtures/images/fashion-0-label9.png", "rb").read()
for module, url in [(httpclient, "localhost:8000"), (grpcclient, "localhost:8001")]:
    client = module.InferenceServerClient(url)
    print(module.__name__, "live:", client.is_server_live(), "ready:", client.is_model_ready("fashion-resnet20"))
    images = module.InferInput("input", [1], "BYTES")
    images.set_data_from_numpy(np.array([png], dtype=np.object_))
    output = module.InferRequestedOutput("logits", class_count=3)
    result = client.infer("fashion-resnet20", [images], outputs=[output])
    print(result.as_numpy("logits"))
