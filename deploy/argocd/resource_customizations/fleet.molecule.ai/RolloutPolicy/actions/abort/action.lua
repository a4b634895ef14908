-- Requests an abort: the operator moves the tenants that moved back and rejects the digest, for
-- every rollout of this policy that is under way (one per channel; Complete and Aborted ones are
-- left alone).
-- The request is the annotation fleet.molecule.ai/abort with a token the operator has not seen:
-- it acts once per token (status.handledRequests.abort echoes the last one handled). The token is
-- os.time() in seconds, or one more than the newest token of this verb if that is not smaller, so
-- every run of this action writes a new one, even twice in a second.
-- Argo CD has no global os in actions: its os.time and os.date come only through require("os").
local os = require("os")
local verb = "abort"
local key = "fleet.molecule.ai/" .. verb
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local token = os.time()
local function above(old)
  local n = tonumber(old)
  if n ~= nil and n >= token and n < 1e15 then
    token = n + 1
  end
end
above(obj.metadata.annotations[key])
if obj.status ~= nil and obj.status.handledRequests ~= nil then
  above(obj.status.handledRequests[verb])
end
obj.metadata.annotations[key] = tostring(token)
return obj
