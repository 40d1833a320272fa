// Key Vault (RBAC authorization, no access policies) holding the app's four secrets. The app
// reads them through Key Vault references resolved with the user-assigned identity.
param name string
param location string
param tags object
@description('Secret names in the vault, keyed by the app setting that references them.')
param secretNames object

@secure()
@description('Client secret of the Entra app registration (MS_CLIENT_SECRET).')
param msClientSecret string
@secure()
@description('HMAC secret(s) the CRM signs its requests with, comma-separated, any verifies (CRM_SHARED_SECRET).')
param crmSharedSecret string
@secure()
@description('HMAC secret(s) the service signs its callbacks with, distinct from the request secret, comma-separated, first one signs (CRM_CALLBACK_SECRET).')
param crmCallbackSecret string
@secure()
@description('Token cache encryption keys, "kid:base64(32 bytes)" comma-separated, first one encrypts (TOKEN_ENCRYPTION_KEYS).')
param tokenEncryptionKeys string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:No VNet in this template: the app resolves Key Vault references over the public endpoint. RBAC authorization, Entra ID only (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109 (README: Checkov exceptions).
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

var secretValues = [
  { name: secretNames.MS_CLIENT_SECRET, value: msClientSecret }
  { name: secretNames.CRM_SHARED_SECRET, value: crmSharedSecret }
  { name: secretNames.CRM_CALLBACK_SECRET, value: crmCallbackSecret }
  { name: secretNames.TOKEN_ENCRYPTION_KEYS, value: tokenEncryptionKeys }
]

resource secrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [
  for secret in secretValues: {
    // checkov:skip=CKV_AZURE_41:No expiry: Key Vault will not return an expired secret, so the app would stop at start. Rotation is by value lists and re-provisioning (README: Checkov exceptions).
    parent: vault
    name: secret.name
    properties: {
      value: secret.value
      contentType: 'text/plain'
    }
  }
]

output name string = vault.name
output resourceId string = vault.id
