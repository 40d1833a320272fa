// Alerts: messages landing on a poison queue, a queue backlog, users needing to sign in again
// (the app logs a line containing 'connection.reauth_required'), and failing function runs.
// Queries run against the Log Analytics workspace behind Application Insights (AppTraces,
// AppRequests) and the storage queue logs (StorageQueueLogs, see storage.bicep).
param namePrefix string
param location string
param tags object
param logAnalyticsWorkspaceId string
param queueServiceId string
@description('E-mail address that receives alerts; empty = alerts fire in the portal only.')
param alertEmail string
@description('Alert when more than this many reauth_required lines are logged in an hour.')
param reauthRequiredPerHour int
@description('Alert when more than this many function runs fail in 15 minutes.')
param functionFailuresPer15Minutes int
@description('Alert when the account holds more than this many queue messages on average over an hour.')
param queueBacklogMessages int

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: '${namePrefix}-oncall'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'crmsync'
    enabled: true
    emailReceivers: [
      {
        name: 'oncall'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actions = empty(alertEmail) ? [] : [actionGroup.id]

var logAlerts = [
  {
    name: 'poison-messages'
    description: 'A message failed maxDequeueCount times and was moved to a -poison queue. Inspect the queue named in the Queue dimension, fix the cause, then replay or delete the messages.'
    severity: 1
    frequency: 'PT5M'
    window: 'PT15M'
    threshold: 0
    dimension: 'Queue'
    query: 'StorageQueueLogs | where OperationName == "PutMessage" and toint(StatusCode) between (200 .. 299) | extend Queue = extract(@"/([a-z0-9-]+-poison)/messages", 1, Uri) | where isnotempty(Queue) | summarize Messages = count() by Queue'
    metric: 'Messages'
  }
  {
    name: 'reauth-required'
    description: 'Users are being moved to reauth_required (refresh token rejected with invalid_grant): check the app registration secret, consent and Conditional Access.'
    severity: 2
    frequency: 'PT15M'
    window: 'PT1H'
    threshold: reauthRequiredPerHour
    dimension: ''
    query: 'AppTraces | where Message has "connection.reauth_required" | summarize Events = count()'
    metric: 'Events'
  }
  {
    name: 'function-failures'
    description: 'Function executions are failing; the Function dimension names which one.'
    severity: 2
    frequency: 'PT5M'
    window: 'PT15M'
    threshold: functionFailuresPer15Minutes
    dimension: 'Function'
    query: 'AppRequests | where Success == false | summarize Failures = count() by Function = OperationName'
    metric: 'Failures'
  }
]

resource logAlertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for alert in logAlerts: {
    name: '${namePrefix}-${alert.name}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: '${namePrefix} ${alert.name}'
      description: alert.description
      severity: alert.severity
      enabled: true
      scopes: [logAnalyticsWorkspaceId]
      evaluationFrequency: alert.frequency
      windowSize: alert.window
      autoMitigate: true
      // The tables appear with their first rows; on a new workspace validation fails with
      // "Failed to resolve table". The queries are type-checked by tests/unit/test_infra.py instead.
      skipQueryValidation: true
      criteria: {
        allOf: [
          {
            query: alert.query
            timeAggregation: 'Total'
            metricMeasureColumn: alert.metric
            dimensions: empty(alert.dimension) ? [] : [
              {
                name: alert.dimension
                operator: 'Include'
                values: ['*']
              }
            ]
            operator: 'GreaterThan'
            threshold: alert.threshold
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      actions: {
        actionGroups: actions
      }
    }
  }
]

// Queue depth across the account (Azure Storage has no per-queue metric dimension; the
// per-queue poison signal is the log alert above). QueueMessageCount is reported hourly.
resource queueBacklog 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-queue-backlog'
  location: 'global'
  tags: tags
  properties: {
    description: 'Queue messages are piling up (workers failing, throttled by Graph, or scaled down).'
    severity: 2
    enabled: true
    scopes: [queueServiceId]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT6H'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'QueueMessageCount'
          metricNamespace: 'Microsoft.Storage/storageAccounts/queueServices'
          metricName: 'QueueMessageCount'
          timeAggregation: 'Average'
          operator: 'GreaterThan'
          threshold: queueBacklogMessages
        }
      ]
    }
    actions: [for id in actions: { actionGroupId: id }]
  }
}
