// Storage for the Functions host, the service's queues and tables, and the Flex Consumption
// deployment package. Shared-key access is off: every caller authenticates with Entra ID.

// ---- The service's queues and tables: the one place to change them. ----
// Work queues the code enqueues to and triggers on (shared/rules/queues.py QUEUE_NAMES). Each exists
// once per tenant shard (workQueueShards = WORK_QUEUE_SHARDS): shard 0 keeps the name, shard k is
// '<name>-k'; each is followed by its '-poison' queue: the host moves a message there after
// maxDequeueCount failed runs (host.json), so all exist up front (see the 'queues' loop below).
var workQueues = [
  'activity-sync'
  'mailbox-reconcile'
  'crm-callbacks'
  'activity-backfill'
  'mailbox-maintenance'
  'calendar-move'
  'mailbox-removal'
  'user-enable'
]
// Tables the code reads and writes (shared/store/tables.py TABLE_NAMES holds the same list).
var tableNames = [
  'Connections'
  'Tokens'
  'OAuthFlows'
  'Subscriptions'
  'Links'
  'Dedup'
  'Jobs'
  'MailboxGates'
  'Activities'
  'ActivityTypes'
  'MailboxSync'
  'ReconcilePending'
  'RequestIds'
  'TenantSettings'
  'CapturedEvents'
  'Organizations'
]

param name string
@description('Tenant shards of every work queue (the app setting WORK_QUEUE_SHARDS; one trigger per shard).')
@minValue(1)
@maxValue(64)
param workQueueShards int
param location string
param tags object
@description('Blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string
@description('Log Analytics workspace that receives the queue service logs (poison-queue alert).')
param logAnalyticsWorkspaceId string
@description('Storage redundancy; empty = Standard_ZRS where the region offers it, else Standard_LRS.')
@allowed(['', 'Standard_ZRS', 'Standard_LRS', 'Standard_GZRS', 'Standard_RAGZRS'])
param skuName string = ''

// Flex Consumption regions (main.bicep) where general-purpose v2 accounts can be zone-redundant
// (learn.microsoft.com/azure/storage/common/redundancy-regions-zrs). Elsewhere ZRS fails with
// RedundancyConfigurationNotAvailableInRegion, so the account falls back to LRS.
var zoneRedundantRegions = [
  'australiaeast'
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
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'westeurope'
  'westus2'
  'westus3'
]
var sku = empty(skuName) ? (contains(zoneRedundantRegions, location) ? 'Standard_ZRS' : 'Standard_LRS') : skuName

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:No VNet in this template: the Flex Consumption app reaches storage over its public endpoint. Shared keys are off, so every request needs Entra ID + RBAC (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35; private endpoints come with VNet integration (README: Checkov exceptions).
  // checkov:skip=CKV_AZURE_206:Zone-redundant (ZRS) in-region where offered, LRS elsewhere; geo-replication without a second-region app buys nothing (README: Checkov exceptions).
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: sku
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: { enabled: true, keyType: 'Account' }
        file: { enabled: true, keyType: 'Account' }
        queue: { enabled: true, keyType: 'Account' }
        table: { enabled: true, keyType: 'Account' }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

// Queue i: work queue i / (2 * shards), shard (i / 2) % shards, the '-poison' queue when i is odd.
var queueCount = length(workQueues) * workQueueShards * 2
resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for i in range(0, queueCount): {
    parent: queueService
    name: '${workQueues[i / (workQueueShards * 2)]}${(i / 2) % workQueueShards == 0 ? '' : '-${(i / 2) % workQueueShards}'}${i % 2 == 1 ? '-poison' : ''}'
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for table in tableNames: {
    parent: tableService
    name: table
  }
]

// Queue operations go to Log Analytics (StorageQueueLogs): the poison-queue alert counts the
// messages the host puts on a '-poison' queue (infra/app/alerts.bicep).
resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'queue-logs'
  scope: queueService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      { category: 'StorageWrite', enabled: true }
      { category: 'StorageDelete', enabled: true }
    ]
    metrics: [
      { category: 'Transaction', enabled: true }
    ]
  }
}

output name string = account.name
output resourceId string = account.id
output queueServiceId string = queueService.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
output queueNames array = queueNames
output tableNames array = tableNames
