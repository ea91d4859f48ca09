-- wrk script: POST one fixed KServe v2 binary infer body over keep-alive connections.
-- Usage:
--   FASTML_BODY=body.bin FASTML_HEADER_LEN=123 \
--     wrk -t2 -c64 -d10s --latency -s infer_binary.lua http://127.0.0.1:8000/v2/models/mlp/infer
-- body.bin = JSON header + binary tensors (python -m fastml.loadtest ... --save-body body.bin prints
-- the header length). The URL's path is the infer endpoint. Every answer that is not 2xx/3xx is
-- counted by wrk as "Non-2xx or 3xx responses".
local path = os.getenv("FASTML_BODY")
local header_len = os.getenv("FASTML_HEADER_LEN")
assert(path, "set FASTML_BODY to the request body file")
assert(header_len, "set FASTML_HEADER_LEN to the JSON header length of that body")
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = header_len
