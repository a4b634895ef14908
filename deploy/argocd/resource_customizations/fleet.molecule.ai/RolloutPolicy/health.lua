-- Argo CD health of a fleet.molecule.ai/v1alpha1 RolloutPolicy, read from its rollouts
-- (status.rollouts[], one per channel) and the kstatus conditions the operator writes. Uses only
-- what Argo CD gives an argocd-cm script: the base and table libraries (no string or math library).
local hs = {}

local function condition(kind)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- "Reason: message" of a condition, or the fallback.
local function describe(c, fallback)
  if c == nil or c.message == nil or c.message == "" then
    return fallback
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.message
end

-- "channel: message; channel: message" of the rollouts for which keep(r) holds.
local function rollouts(keep)
  local parts = {}
  for _, r in ipairs(obj.status.rollouts or {}) do
    if keep(r) then
      table.insert(parts, r.channel .. ": " .. (r.message or r.phase))
    end
  end
  return parts
end

-- Phases of a rollout under way (the operator's own list; WaitingForCanaries is stalled).
local function moving(r)
  return r.phase == "Canary" or r.phase == "Soaking" or r.phase == "Production" or r.phase == "Emergency"
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator's first report"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end

local halted = rollouts(function(r) return r.phase == "Halted" end)
if #halted > 0 then
  hs.status = "Degraded"
  hs.message = "Rollout halted: " .. table.concat(halted, "; ")
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end
-- Paused as the operator counts it: every rollout that is under way is paused.
local under_way = rollouts(moving)
local paused = rollouts(function(r) return moving(r) and r.paused == true end)
if #under_way > 0 and #paused == #under_way then
  hs.status = "Suspended"
  hs.message = "Rollout paused: " .. table.concat(paused, "; ")
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "")
  return hs
end
hs.status = "Progressing"
hs.message = describe(ready, describe(condition("Reconciling"), "Waiting for the rollouts to complete"))
return hs
