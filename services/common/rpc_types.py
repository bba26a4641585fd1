"""Names for the grpc types every service handles.

types-grpcio makes a servicer context and a method handler generic in the request and
response message types. The interceptors handle every method alike, and a servicer method's
messages are already in its signature, so both take any message type.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

# Both are strings so that nothing is subscripted at run time (RpcMethodHandler is not generic there).
# The context of one call, as a handler or an interceptor's wrapper receives it.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# One method's handler, as an interceptor receives it and returns it.
MethodHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
