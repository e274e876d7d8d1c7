-- Argo CD actions of an acs-operator.dev CommunicationIdentity: the same requests as
-- `kubectl acs renew` / `kubectl acs revoke`. Both are off while the identity is being
-- deleted; revoke is off until the identity has an ACS user.
local actions = {}
local deleting = obj.metadata.deletionTimestamp ~= nil
local has_user = obj.status ~= nil and obj.status.userId ~= nil and obj.status.userId ~= ""
actions["renew"] = {
  ["disabled"] = deleting,
  ["iconClass"] = "fa fa-fw fa-rotate-right",
  ["displayName"] = "Renew token now",
}
actions["revoke"] = {
  ["disabled"] = deleting or not has_user,
  ["iconClass"] = "fa fa-fw fa-ban",
  ["displayName"] = "Revoke all tokens, then issue a new one",
}
return actions
