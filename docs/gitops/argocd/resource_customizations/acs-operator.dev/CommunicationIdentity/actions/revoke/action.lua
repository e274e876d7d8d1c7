-- Argo CD action "revoke" on an acs-operator.dev CommunicationIdentity: sets the annotation
-- acs-operator.dev/revoke-requested-at to the current UTC time (RFC 3339), as
-- `kubectl acs revoke` does. The operator acts on any value other than the one it last handled
-- (status.lastRevokeRequestHandled).
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["acs-operator.dev/revoke-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
