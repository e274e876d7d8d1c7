-- Argo CD health of an acs-operator.dev CommunicationService or
-- ClusterCommunicationService (the two kinds share this script).
--
-- Ready says whether the credentials Secret resolves and its connection string parses;
-- Stalled and Reconciling follow kstatus. Uses only Lua's base and table libraries:
-- what Argo CD gives a script installed through argocd-cm.
--
--   being deleted                         Progressing
--   no status yet                         Progressing "Waiting for the operator"
--   Stalled=True (for this generation)    Degraded: a person must act
--   observedGeneration < generation       Progressing
--   Ready=True                            Healthy
--   Ready=False, Reconciling=True         Progressing
--   Ready=False otherwise                 Degraded (Secret missing, key missing, ...)
local hs = {}

local function condition(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function describe(c, fallback)
  local reason, message = c.reason, c.message
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= nil and message ~= "" then
    return message
  end
  if reason ~= nil and reason ~= "" then
    return reason
  end
  return fallback
end

local generation = obj.metadata.generation
local status = obj.status
local conditions = {}
if status ~= nil and status.conditions ~= nil then
  conditions = status.conditions
end
local ready = condition(conditions, "Ready")
local stalled = condition(conditions, "Stalled")
local reconciling = condition(conditions, "Reconciling")

local function current(c)
  return c.observedGeneration == nil or generation == nil or c.observedGeneration >= generation
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting"
  return hs
end

if #conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

if is_true(stalled) and current(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to apply generation " .. generation
    .. " (status describes generation " .. status.observedGeneration .. ")"
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = describe({ message = ready.message }, "Ready")
  return hs
end

if ready ~= nil and ready.status == "False" and not is_true(reconciling) then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
if is_true(reconciling) then
  hs.message = describe(reconciling, "Reconciling")
else
  hs.message = "Waiting for the operator"
end
return hs
