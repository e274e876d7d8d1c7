# The original ACS access-tokens quickstart (late 2020), written against the retired
# azure-communication-administration 1.0.0b4 package and its 2020-07-20-preview2 API.
# It runs unmodified against the emulator over --tls; hack/compat/run.sh checks its output.
import os
from azure.communication.administration import CommunicationIdentityClient
from azure.communication.administration import CommunicationUser

try:
    print('Azure Communication Services - Access Tokens Quickstart')

    # This code demonstrates how to fetch your connection string
    # from an environment variable.
    connection_string = os.environ['COMMUNICATION_SERVICES_CONNECTION_STRING']

    # Instantiate the identity client
    client = CommunicationIdentityClient.from_connection_string(connection_string)

    # Create an identity
    identity = client.create_user()
    print("Created an identity with ID: " + identity.identifier + ":")

    # Issue an access token with the "voip" scope for an identity
    token_result = client.issue_token(identity, ["voip"])
    expires_on = token_result.expires_on.strftime('%d/%m/%y %I:%M %S %p')
    print("Issued an access token with 'voip' scope that expires at " + expires_on + ":")
    print(token_result.token)

    # Refresh access tokens for an existing identity
    existingIdentity = identity.identifier
    identity = CommunicationUser(existingIdentity)
    token_result = client.issue_token(identity, ["voip"])
    print("Refreshed the access token for identity with ID: " + identity.identifier)

    # Revoke access tokens
    client.revoke_tokens(identity)
    print("\nSuccessfully revoked all access tokens for identity with ID: " + identity.identifier)

    # Delete an identity
    client.delete_user(identity)
    print("\nDeleted the identity with ID: " + identity.identifier)

except Exception as ex:
    print('Exception:')
    print(ex)
