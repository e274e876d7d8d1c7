module acs-identity-operator/pause

go 1.24
