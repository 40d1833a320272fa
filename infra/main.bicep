// crm-outlook-sync on Azure: `azd up` provisions this and deploys the app (service 'api').
// One user-assigned identity, no keys: storage without shared keys, monitoring without local
// auth, secrets in Key Vault read through Key Vault references. Modules live in ./app.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names and tags are derived from it.')
param environmentName string

// Regions that offer Flex Consumption, as in the Azure-Samples azd Flex Consumption templates (without
// the eastus2euap canary), so `azd up` only offers these. Check `az functionapp list-flexconsumption-locations`
// for new ones, and add your region here for a national cloud (infra/README.md).
@minLength(1)
@description('Region for every resource (must offer Flex Consumption).')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({ azd: { type: 'location' } })
param location string

// ---- Microsoft identity platform and Graph (national clouds change the two base URLs) ----
@description('Application (client) id of the Entra app registration.')
param msClientId string
@description('Tenant id or domain, or "common" / "organizations" for multi-tenant sign-in.')
param msTenant string = 'common'
@description('Authority host, e.g. https://login.microsoftonline.us (US Gov), https://login.chinacloudapi.cn (China).')
param msAuthorityHost string = 'https://login.microsoftonline.com'
@description('Graph base URL, e.g. https://graph.microsoft.us/v1.0 (US Gov), https://microsoftgraph.chinacloudapi.cn/v1.0 (China).')
param graphApiBase string = 'https://graph.microsoft.com/v1.0'
@description('Name of a Key Vault certificate (PEM content type) the app signs its app-only token requests with (organisation mode); empty = the client secret. Upload it after the first deployment: infra/README.md.')
param msClientCertificateName string = ''

// ---- The CRM ----
@description('URL the service POSTs signed callbacks to.')
param crmCallbackUrl string
@description('Comma-separated origins the CRM may ask to return the browser to after sign-in.')
param crmReturnOrigins string

// ---- Tuning (defaults are the code's defaults) ----
@minValue(0)
@maxValue(1825)
param syncWindowPastDays int = 30
@minValue(1)
@maxValue(1825)
param syncWindowFutureDays int = 365
@allowed(['keep', 'remove'])
param completedActivities string = 'keep'
@description('Scale knobs (README "Scale"): shards per work queue, users per fan-out message, fan-out spread (s), host.json functionTimeout and queue batchSize.')
param scale object = { workQueueShards: 8, fanoutBatchSize: 10, fanoutSpreadSeconds: 300, functionTimeout: '00:10:00', queueBatchSize: 4 }
@description('Flex Consumption scale-out limit per function: 40 to 1000.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Storage redundancy. Empty = Standard_ZRS where the region offers it, else Standard_LRS (app/storage.bicep).')
@allowed(['', 'Standard_ZRS', 'Standard_LRS', 'Standard_GZRS', 'Standard_RAGZRS'])
param storageSkuName string = ''

// ---- Secrets: stored in Key Vault, never defaulted, never output ----
@secure()
@minLength(1)
param msClientSecret string
@secure()
@minLength(32)
param crmSharedSecret string
@secure()
@minLength(32)
param crmCallbackSecret string
@secure()
@minLength(1)
param tokenEncryptionKeys string

// ---- Alerts ----
@description('E-mail address for alerts; empty = alerts show in the portal only.')
param alertEmail string = ''
param reauthRequiredPerHour int = 5
param functionFailuresPer15Minutes int = 5
param queueBacklogMessages int = 1000

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = '${abbrs.webSitesFunctions}api-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
// Key Vault secret names (no underscores allowed there), keyed by the app setting they back.
var secretNames = { MS_CLIENT_SECRET: 'ms-client-secret', CRM_SHARED_SECRET: 'crm-shared-secret', CRM_CALLBACK_SECRET: 'crm-callback-secret', TOKEN_ENCRYPTION_KEYS: 'token-encryption-keys' }

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identity './app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring './app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module storage './app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
    skuName: storageSkuName
    workQueueShards: scale.workQueueShards
  }
}

module keyVault './app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    secretNames: secretNames
    msClientSecret: msClientSecret
    crmSharedSecret: crmSharedSecret
    crmCallbackSecret: crmCallbackSecret
    tokenEncryptionKeys: tokenEncryptionKeys
  }
}

module rbac './app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module api './app/api.bicep' = {
  name: 'api'
  scope: rg
  // Roles first, so the host finds its storage, secrets and telemetry reachable on first start.
  dependsOn: [rbac]
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: keyVault.outputs.name
    secretNames: secretNames
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    msClientId: msClientId
    msTenant: msTenant
    msAuthorityHost: msAuthorityHost
    graphApiBase: graphApiBase
    crmCallbackUrl: crmCallbackUrl
    crmReturnOrigins: crmReturnOrigins
    syncWindowPastDays: syncWindowPastDays
    syncWindowFutureDays: syncWindowFutureDays
    completedActivities: completedActivities
    scale: scale
    msClientCertificateName: msClientCertificateName
  }
}

module alerts './app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: 'crm-sync-${resourceToken}'
    location: location
    tags: tags
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
    queueServiceId: storage.outputs.queueServiceId
    alertEmail: alertEmail
    reauthRequiredPerHour: reauthRequiredPerHour
    functionFailuresPer15Minutes: functionFailuresPer15Minutes
    queueBacklogMessages: queueBacklogMessages
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
@description('Public base URL of the service (PUBLIC_BASE_URL).')
output PUBLIC_BASE_URL string = 'https://${api.outputs.defaultHostName}'
@description('Redirect URI to register on the Entra app registration (Web platform).')
output REDIRECT_URI string = 'https://${api.outputs.defaultHostName}/api/auth/callback'
