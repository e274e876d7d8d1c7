-- Argo CD health of an acs-operator.dev CommunicationIdentity.
--
-- Reads the kstatus conditions the operator writes (Ready, Reconciling, Stalled,
-- RenewalFailing) and status.observedGeneration. Uses only Lua's base and table
-- libraries: what Argo CD gives a script installed through argocd-cm.
--
--   being deleted                         Progressing (Degraded when cleanup is stuck)
--   no status yet                         Progressing "Waiting for the operator"
--   Stalled=True (for this generation)    Degraded: a person must act (the message says
--                                         when the token in the Secret still works)
--   observedGeneration < generation       Progressing: the spec change is not in the Secret yet
--   Ready=True, RenewalFailing=True       Degraded: the token still works, renewal fails
--   Ready=True                            Healthy
--   Ready=False, TokensRevoked/Pending    Progressing: a new token is on its way
--   Ready=False, Reconciling=True         Progressing
--   Ready=False otherwise                 Degraded
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

-- "Reason: message", or whichever of the two is set.
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
local renewal = condition(conditions, "RenewalFailing")

-- A condition written for an older generation says nothing about the current spec.
local function current(c)
  return c.observedGeneration == nil or generation == nil or c.observedGeneration >= generation
end

if obj.metadata.deletionTimestamp ~= nil then
  if is_true(stalled) and current(stalled) then
    hs.status = "Degraded"
    hs.message = describe(stalled, "Cleanup is stuck")
  elseif ready ~= nil and ready.status == "False" and ready.reason == "CleanupFailed" then
    hs.status = "Degraded"
    hs.message = describe(ready, "Cleanup is stuck")
  else
    hs.status = "Progressing"
    hs.message = "Deleting: the operator is cleaning up the ACS user"
  end
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
  if is_true(ready) then
    hs.message = "Token still valid; " .. hs.message
  end
  return hs
end

if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  if is_true(reconciling) then
    hs.message = describe(reconciling, "Reconciling")
  else
    hs.message = "Waiting for the operator to apply generation " .. generation
      .. " (status describes generation " .. status.observedGeneration .. ")"
  end
  return hs
end

if is_true(ready) then
  if is_true(renewal) then
    hs.status = "Degraded"
    hs.message = "Token still valid; renewal failing: " .. describe(renewal, "RenewalFailing")
  else
    hs.status = "Healthy"
    hs.message = describe({ message = ready.message }, "Ready")
  end
  return hs
end

if ready ~= nil and ready.status == "False" then
  if ready.reason == "TokensRevoked" or ready.reason == "Pending" or is_true(reconciling) then
    hs.status = "Progressing"
    if is_true(reconciling) and ready.reason ~= "TokensRevoked" then
      hs.message = describe(reconciling, "Reconciling")
    else
      hs.message = describe(ready, "Waiting for a token")
    end
  else
    hs.status = "Degraded"
    hs.message = describe(ready, "Not ready")
  end
  return hs
end

hs.status = "Progressing"
if is_true(reconciling) then
  hs.message = describe(reconciling, "Reconciling")
else
  hs.message = "Waiting for the operator"
end
return hs
