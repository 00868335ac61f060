"""gRPC seam: generated draftlink.v1 stubs (built from proto/, not committed) and conversions."""

from common.protogen import ensure_generated

ensure_generated()

from common.rpc.gen import verifier_pb2 as pb  # noqa: E402
from common.rpc.gen import verifier_pb2_grpc as pb_grpc  # noqa: E402

__all__ = ["pb", "pb_grpc"]
