{{/* Names. A release called "hami" gets hami-scheduler, hami-device-plugin, ... */}}
{{- define "hami.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hami.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "hami.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "hami.scheduler" -}}{{ include "hami.fullname" . }}-scheduler{{- end -}}
{{- define "hami.devicePlugin" -}}{{ include "hami.fullname" . }}-device-plugin{{- end -}}
{{- define "hami.draPlugin" -}}{{ include "hami.fullname" . }}-dra-plugin{{- end -}}
{{- define "hami.monitor" -}}{{ include "hami.fullname" . }}-monitor{{- end -}}
{{- define "hami.webui" -}}{{ include "hami.fullname" . }}-webui{{- end -}}
{{- define "hami.webhook" -}}{{ include "hami.fullname" . }}-webhook{{- end -}}
{{- define "hami.webhookCASecret" -}}{{ include "hami.fullname" . }}-webhook-ca{{- end -}}
{{- define "hami.webhookTLSSecret" -}}{{ include "hami.fullname" . }}-webhook-tls{{- end -}}
{{- define "hami.deviceConfig" -}}{{ include "hami.fullname" . }}-device-config{{- end -}}
{{- define "hami.nodeConfig" -}}
{{- default (printf "%s-node-config" (include "hami.fullname" .)) .Values.devicePlugin.nodeConfiguration.externalConfigName -}}
{{- end -}}

{{/* The full user name of one of the chart's ServiceAccounts: include "hami.saUser" (list . "scheduler") */}}
{{- define "hami.saUser" -}}
{{- $root := index . 0 -}}
system:serviceaccount:{{ include "hami.namespace" $root }}:{{ include "hami.fullname" $root }}-{{ index . 1 }}
{{- end -}}

{{/* Labels: include "hami.labels" (list . "scheduler") */}}
{{- define "hami.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hami.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- with $root.Values.global.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "hami.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "hami.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* metadata for a namespaced object: include "hami.metadata" (list . "scheduler" "name") */}}
{{- define "hami.metadata" -}}
{{- $root := index . 0 -}}
name: {{ index . 2 }}
namespace: {{ include "hami.namespace" $root }}
{{ include "hami.clusterMetadata" . }}
{{- end -}}

{{/* labels and annotations of any object (after its name): include "hami.clusterMetadata" (list . "scheduler") */}}
{{- define "hami.clusterMetadata" -}}
{{- $root := index . 0 -}}
labels:
  {{- include "hami.labels" (list $root (index . 1)) | nindent 2 }}
{{- with $root.Values.global.annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* An image reference: include "hami.image" (list . .Values.devicePlugin.image) */}}
{{- define "hami.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $registry := default $img.registry $root.Values.global.imageRegistry -}}
{{- $tag := $img.tag | default $root.Values.global.imageTag | default $root.Chart.AppVersion -}}
{{- if $registry -}}{{ $registry }}/{{- end -}}{{ $img.repository }}:{{ $tag }}
{{- end -}}

{{- define "hami.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* Every managed resource name, in the order the extender lists them (managedResources): the
NVIDIA names from the values, then those of each other vendor whose section is in
device-config.content, in hami's registry order (hami.devices.registry.default_factories) with
hami's default names for keys the section leaves out. */}}
{{- define "hami.resourceNames" -}}
{{- $v := .Values -}}
{{- $names := list $v.resourceName $v.resourceMem $v.resourceMemPercentage $v.resourceCores $v.resourcePriority -}}
{{- $content := index $v "device-config" "content" -}}
{{- if $content -}}
{{- $dc := fromYaml $content -}}
{{- /* Enflame DRS: resourceNameDRSGCU, else the legacy resourceNameVGCU (HAMi's resolution) */ -}}
{{- $enf := index $dc "enflame" | default dict -}}
{{- $drs := index $enf "resourceNameVGCU" | default "enflame.com/drs-gcu" -}}
{{- $vendors := list
  (list "cambricon" (list (list "resourceCountName" "cambricon.com/vmlu") (list "resourceMemoryName" "cambricon.com/mlu.smlu.vmemory") (list "resourceCoreName" "cambricon.com/mlu.smlu.vcore")))
  (list "hygon" (list (list "resourceCountName" "hygon.com/dcunum") (list "resourceMemoryName" "hygon.com/dcumem") (list "resourceCoreName" "hygon.com/dcucores")))
  (list "metax" (list (list "resourceCountName" "metax-tech.com/gpu") (list "resourceVCountName" "metax-tech.com/sgpu") (list "resourceVMemoryName" "metax-tech.com/vmemory") (list "resourceVCoreName" "metax-tech.com/vcore")))
  (list "iluvatars" (list))
  (list "mthreads" (list (list "resourceCountName" "mthreads.com/vgpu") (list "resourceMemoryName" "mthreads.com/sgpu-memory") (list "resourceCoreName" "mthreads.com/sgpu-core")))
  (list "enflame" (list (list "resourceNameGCU" "enflame.com/gcu") (list "resourceNameDRSGCU" $drs) (list "resourceNameGCUMemory" "enflame.com/gcu-memory") (list "resourceNameGCUCore" "enflame.com/gcu-core")))
  (list "kunlun" (list (list "resourceCountName" "kunlunxin.com/xpu") (list "resourceVCountName" "kunlunxin.com/vxpu") (list "resourceVMemoryName" "kunlunxin.com/vxpu-memory")))
  (list "amd" (list (list "resourceCountName" "amd.com/gpu") (list "resourceMemoryName" "amd.com/gpumem") (list "resourceMemoryPercentageName" "amd.com/gpumem-percentage") (list "resourceCoreName" "amd.com/gpucores")))
  (list "awsneuron" (list (list "resourceCountName" "aws.amazon.com/neuron") (list "resourceCoreName" "aws.amazon.com/neuroncore")))
  (list "vastai" (list (list "resourceCountName" "vastaitech.com/va")))
  (list "biren" (list (list "resourceCountName" "birentech.com/gpu")))
-}}
{{- range $vendors -}}
{{- $sec := index . 0 -}}
{{- $section := hasKey $dc $sec | ternary (index $dc $sec) nil -}}
{{- if not (kindIs "invalid" $section) -}}
{{- if eq $sec "iluvatars" -}}
{{- range $section -}}
{{- $chip := toString .chipName -}}
{{- $names = append $names (.resourceCountName | default (printf "iluvatar.ai/%s-vgpu" $chip)) -}}
{{- $names = append $names (.resourceMemoryName | default (printf "iluvatar.ai/%s.vMem" $chip)) -}}
{{- $names = append $names (.resourceCoreName | default (printf "iluvatar.ai/%s.vCore" $chip)) -}}
{{- end -}}
{{- else -}}
{{- range (index . 1) -}}
{{- $names = append $names ((index $section (index . 0)) | default (index . 1)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* vnpus (Ascend): one chip per configs entry ({hamiVnpuCore, configs} or HAMi's older bare
list); no configs: hami's default chips (hami.config.device._default_vnpus) */ -}}
{{- if hasKey $dc "vnpus" -}}
{{- $vnpus := index $dc "vnpus" -}}
{{- $chips := list -}}
{{- if kindIs "slice" $vnpus -}}
{{- $chips = $vnpus -}}
{{- else if and (kindIs "map" $vnpus) (hasKey $vnpus "configs") -}}
{{- $chips = index $vnpus "configs" -}}
{{- else -}}
{{- range (list "Ascend910A" "Ascend910B2" "Ascend910B3" "Ascend910B4-1" "Ascend910B4" "Ascend310P" "Ascend910C") -}}
{{- $chips = append $chips (dict "commonWord" .) -}}
{{- end -}}
{{- end -}}
{{- range $chips -}}
{{- $res := .resourceName | default (printf "huawei.com/%s" (toString .commonWord)) -}}
{{- $names = append $names $res -}}
{{- $names = append $names (.resourceMemoryName | default (printf "%s-memory" $res)) -}}
{{- $names = append $names (.resourceCoreName | default (printf "%s-core" $res)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* The distinct domains ("nvidia.com/") of the resource names, as a JSON list. */}}
{{- define "hami.resourcePrefixes" -}}
{{- $out := list -}}
{{- range (include "hami.resourceNames" . | fromJsonArray) -}}
{{- $out = append $out (printf "%s/" (regexReplaceAll "/.*$" . "")) -}}
{{- end -}}
{{- toJson (uniq $out) -}}
{{- end -}}

{{/* nodeLockExpire ("90s", "5m", "1h") in whole seconds. */}}
{{- define "hami.nodeLockSeconds" -}}
{{- $v := toString .Values.scheduler.nodeLockExpire -}}
{{- if not (regexMatch "^[0-9]+(s|m|h)$" $v) -}}
{{- fail (printf "scheduler.nodeLockExpire %q: use <n>s, <n>m or <n>h" $v) -}}
{{- end -}}
{{- $n := regexFind "^[0-9]+" $v | int -}}
{{- $unit := trimPrefix (toString $n) $v -}}
{{- if eq $unit "m" }}{{ mul $n 60 }}{{ else if eq $unit "h" }}{{ mul $n 3600 }}{{ else }}{{ $n }}{{ end -}}
{{- end -}}

{{/* The extender's metrics address: ":9395" -> "0.0.0.0:9395". */}}
{{- define "hami.metricsBind" -}}
{{- $a := toString .Values.scheduler.metricsBindAddress -}}
{{- if hasPrefix ":" $a }}0.0.0.0{{ $a }}{{ else }}{{ $a }}{{ end -}}
{{- end -}}

{{- define "hami.metricsPort" -}}
{{- regexFind "[0-9]+$" (toString .Values.scheduler.metricsBindAddress) -}}
{{- end -}}

{{- define "hami.hookPath" -}}{{ trimSuffix "/" .Values.global.gpuHookPath }}{{- end -}}
{{- define "hami.vgpuPath" -}}{{ include "hami.hookPath" . }}/vgpu{{- end -}}

{{/* Checksum of a rendered template, to roll pods when their configuration changes. */}}
{{- define "hami.checksum" -}}
{{- $root := index . 0 -}}
{{- include (print $root.Template.BasePath "/" (index . 1)) $root | sha256sum -}}
{{- end -}}

{{/* The container securityContext of every non-root container. */}}
{{- define "hami.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The init container that copies libvgpu.so and ld.so.preload into <gpuHookPath>/vgpu on the
host (the device plugin's and the DRA plugin's pods; both mount the `vgpu` volume). */}}
{{- define "hami.installHostContainer" -}}
{{- $dp := .Values.devicePlugin -}}
- name: install-host
  image: {{ include "hami.image" (list . $dp.image) }}
  imagePullPolicy: {{ $dp.image.pullPolicy }}
  args: ["install-host", "--hook-path", {{ include "hami.hookPath" . | quote }}]
  securityContext:
    runAsUser: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
      add: [CHOWN, DAC_OVERRIDE, FOWNER]
  resources:
    {{- toYaml $dp.installer.resources | nindent 4 }}
  volumeMounts:
    - name: vgpu
      mountPath: {{ include "hami.vgpuPath" . }}
{{- end -}}
