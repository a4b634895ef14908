-- Argo CD actions of a fleet.molecule.ai/v1alpha1 RolloutPolicy. Each one writes a one-shot
-- request annotation (fleet.molecule.ai/<verb>: <fresh token>) that the operator acts on once.
-- An action is disabled when the operator would do nothing with it.
local actions = {}
local soaking, pausable, paused, halted, abortable = false, false, false, false, false
for _, r in ipairs((obj.status or {}).rollouts or {}) do
  local p = r.phase
  if p == "Soaking" then
    soaking = true
  end
  if (p == "Canary" or p == "WaitingForCanaries" or p == "Soaking" or p == "Production") and r.paused ~= true then
    pausable = true
  end
  if r.paused == true and p ~= "Complete" and p ~= "Aborted" then
    paused = true
  end
  if p == "Halted" then
    halted = true
  end
  if p ~= "Complete" and p ~= "Aborted" then
    abortable = true
  end
end
-- promote ends a soak early; the operator ignores it in any other phase.
actions["promote"] = {["disabled"] = not soaking, ["iconClass"] = "fa fa-fw fa-forward", ["displayName"] = "Promote (end the canary soak)"}
actions["pause"] = {["disabled"] = not pausable, ["iconClass"] = "fa fa-fw fa-pause-circle", ["displayName"] = "Pause (no new batch)"}
actions["resume"] = {["disabled"] = not paused, ["iconClass"] = "fa fa-fw fa-play-circle", ["displayName"] = "Resume"}
actions["abort"] = {["disabled"] = not abortable, ["iconClass"] = "fa fa-fw fa-stop-circle", ["displayName"] = "Abort (move tenants back, reject the digest)"}
actions["retry"] = {["disabled"] = not halted, ["iconClass"] = "fa fa-fw fa-redo", ["displayName"] = "Retry the failed tenants"}
return actions
