// The Function App on Flex Consumption (Python 3.11) with its user-assigned identity, and its
// app settings: exactly the settings shared/rules/settings.py reads plus the platform's own.
param name string
param planName string
param location string
param tags object
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string
param keyVaultName string
@description('Secret names in the vault, keyed by the app setting that references them.')
param secretNames object
param maximumInstanceCount int
param instanceMemoryMB int

// Non-secret settings (see main.bicep for their meaning and defaults).
param msClientId string
param msTenant string
param msAuthorityHost string
param graphApiBase string
param crmCallbackUrl string
param crmReturnOrigins string
param syncWindowPastDays int
param syncWindowFutureDays int
param completedActivities string
@description('workQueueShards, fanoutBatchSize, fanoutSpreadSeconds, functionTimeout, queueBatchSize (main.bicep).')
param scale object
@description('Key Vault certificate for app-only tokens (its secret holds the PEM key + certificate); empty: none.')
param msClientCertificateName string = ''

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource msClientSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: secretNames.MS_CLIENT_SECRET
}

resource crmSharedSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: secretNames.CRM_SHARED_SECRET
}

resource crmCallbackSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: secretNames.CRM_CALLBACK_SECRET
}

resource tokenEncryptionKeys 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: secretNames.TOKEN_ENCRYPTION_KEYS
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy on Flex Consumption bills two always-ready instances per function; work is queued and retried, so a zone outage delays it (README: Checkov exceptions).
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:Must be public: the CRM backend, users' browsers (sign-in callback) and Microsoft Graph (webhooks) call it (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_17:Graph and browsers cannot present client certificates; calls are authenticated by HMAC signature, Graph clientState or OAuth state (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_212:Flex Consumption manages instances itself (scale from zero, per function); there is no minimum instance count to set (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_213:Flex Consumption does not support the App Service health check; GET /api/health exists for external probes (README: Checkov exceptions).
  name: name
  // checkov:skip=CKV_AZURE_78:Flex Consumption rejects siteConfig.ftpsState (ARM error 51021); FTP is off through the 'ftp' basicPublishingCredentialsPolicies resource (README: Checkov exceptions).
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled' // the CRM, browsers and Graph call it from the internet
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      // No ftpsState: ARM rejects it on Flex Consumption sites (error 51021). FTP stays off through
      // the 'ftp' publishing-credentials policy below.
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Flex Consumption takes the runtime from functionAppConfig: no FUNCTIONS_WORKER_RUNTIME /
// FUNCTIONS_EXTENSION_VERSION here (the platform rejects them on this plan).
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13:checkov reads every sites/config resource as the web config; this is the appsettings config, which has no such property (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_63:checkov reads every sites/config resource as the web config; this is the appsettings config, which has no such property (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_65:checkov reads every sites/config resource as the web config; this is the appsettings config, which has no such property (README: Checkov exceptions).
  parent: site
  // checkov:skip=CKV_AZURE_66:checkov reads every sites/config resource as the web config; this is the appsettings config, which has no such property (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_80:checkov reads every sites/config resource as the web config; this is the appsettings config, which has no such property (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_88:checkov reads every sites/config resource as the web config; this is the appsettings config, which has no such property (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_222:checkov reads every sites/config resource as the web config; this is the appsettings config, which has no such property (README: Checkov exceptions).
  name: 'appsettings'
  properties: {
    // Host storage through the identity; service URIs (not accountName) so national clouds work.
    AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
    AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
    AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    // Telemetry with Entra ID auth (the component has local auth disabled).
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
    // The service's own settings (shared/rules/settings.py SETTING_NAMES).
    MS_CLIENT_ID: msClientId
    MS_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${msClientSecret.properties.secretUri})'
    MS_TENANT: msTenant
    MS_AUTHORITY_HOST: msAuthorityHost
    GRAPH_API_BASE: graphApiBase
    PUBLIC_BASE_URL: 'https://${site.properties.defaultHostName}'
    CRM_SHARED_SECRET: '@Microsoft.KeyVault(SecretUri=${crmSharedSecret.properties.secretUri})'
    CRM_CALLBACK_SECRET: '@Microsoft.KeyVault(SecretUri=${crmCallbackSecret.properties.secretUri})'
    CRM_CALLBACK_URL: crmCallbackUrl
    CRM_RETURN_ORIGINS: crmReturnOrigins
    TOKEN_ENCRYPTION_KEYS: '@Microsoft.KeyVault(SecretUri=${tokenEncryptionKeys.properties.secretUri})'
    SYNC_WINDOW_PAST_DAYS: string(syncWindowPastDays)
    SYNC_WINDOW_FUTURE_DAYS: string(syncWindowFutureDays)
    COMPLETED_ACTIVITIES: completedActivities
    WORK_QUEUE_SHARDS: string(scale.workQueueShards)
    FANOUT_BATCH_SIZE: string(scale.fanoutBatchSize)
    FANOUT_SPREAD_SECONDS: string(scale.fanoutSpreadSeconds)
    // host.json overrides (README "Scale"): the longest run of one invocation, and how many messages
    // one instance takes from a queue at once (also Flex's per-instance scaling target).
    AzureFunctionsJobHost__functionTimeout: scale.functionTimeout
    AzureFunctionsJobHost__extensions__queues__batchSize: string(scale.queueBatchSize)
    // A Key Vault certificate's secret (same name) is its key + certificate, read by the identity.
    MS_CLIENT_CERTIFICATE: empty(msClientCertificateName) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${msClientCertificateName})'
  }
}

// No publishing passwords: azd deploys the package to the blob container with Entra ID.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
