//! A blocking CRI client (`runtime.v1`, which containerd 1.6 serves beside
//! `v1alpha2`) over containerd's unix socket: k8s-cri's tonic clients on a
//! current-thread tokio runtime, every call bounded in time so that a hung
//! runtime fails the scenario instead of the whole run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerStatus, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, ImageSpec, ImageStatusRequest, LinuxContainerResources, ListContainersRequest,
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxStatus, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StatusRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest, VersionRequest, VersionResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// What one ExecSync returned.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

impl ExecOutput {
    pub fn describe(&self) -> String {
        format!(
            "exit code {}, stdout {:?}, stderr {:?}",
            self.exit_code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    socket: PathBuf,
    /// The bound of one call that may boot a VM (RunPodSandbox on TCG).
    pub slow_call: Duration,
}

/// The bound of calls that only read or signal.
const QUICK_CALL: Duration = Duration::from_secs(60);

impl CriClient {
    /// Connects to the CRI service on containerd's socket `socket`.
    pub fn connect(socket: &Path, slow_call: Duration) -> Result<CriClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start a tokio runtime for the CRI client")?;
        let path = socket.to_path_buf();
        // The URI is required by tonic and ignored by the connector.
        let endpoint = Endpoint::try_from("http://[::]:50051")?.connect_timeout(QUICK_CALL);
        let channel = runtime
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                })),
            )
            .with_context(|| format!("connect to the CRI service on {}", socket.display()))?;
        Ok(CriClient {
            runtime,
            channel,
            socket: socket.to_path_buf(),
            slow_call,
        })
    }

    fn runtime_service(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// Runs one call with a time bound; the error names the call.
    fn call<T>(
        &self,
        what: &str,
        bound: Duration,
        fut: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        let r = self
            .runtime
            .block_on(async { tokio::time::timeout(bound, fut).await });
        match r {
            Err(_) => anyhow::bail!(
                "CRI {what} did not answer within {bound:?} (socket {})",
                self.socket.display()
            ),
            Ok(Err(status)) => Err(CriError {
                call: what.to_string(),
                code: status.code(),
                message: status.message().to_string(),
            }
            .into()),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }

    pub fn version(&self) -> Result<VersionResponse> {
        let mut c = self.runtime_service();
        self.call(
            "Version",
            QUICK_CALL,
            c.version(VersionRequest {
                version: "v1".into(),
            }),
        )
    }

    pub fn image_present(&self, image: &str) -> Result<bool> {
        let mut c = ImageServiceClient::new(self.channel.clone());
        let r = self.call(
            "ImageStatus",
            QUICK_CALL,
            c.image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            }),
        )?;
        Ok(r.image.is_some())
    }

    pub fn run_pod_sandbox(&self, config: &PodSandboxConfig, handler: &str) -> Result<String> {
        let mut c = self.runtime_service();
        let r = self.call(
            "RunPodSandbox",
            self.slow_call,
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            }),
        )?;
        Ok(r.pod_sandbox_id)
    }

    fn pod_sandbox_status_call(&self, id: &str, verbose: bool) -> Result<PodSandboxStatusResponse> {
        let mut c = self.runtime_service();
        self.call(
            if verbose {
                "PodSandboxStatus (verbose)"
            } else {
                "PodSandboxStatus"
            },
            QUICK_CALL,
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose,
            }),
        )
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus> {
        self.pod_sandbox_status_call(id, false)?
            .status
            .with_context(|| format!("PodSandboxStatus of {id} carries no status"))
    }

    /// containerd's verbose PodSandboxStatus `info` entry: a JSON object
    /// with the sandbox's pid, CNI result and runtime spec.
    pub fn pod_sandbox_info(&self, id: &str) -> Result<serde_json::Value> {
        let r = self.pod_sandbox_status_call(id, true)?;
        let info = r
            .info
            .get("info")
            .with_context(|| format!("verbose PodSandboxStatus of {id} has no \"info\" entry"))?;
        serde_json::from_str(info)
            .with_context(|| format!("verbose PodSandboxStatus of {id}: \"info\" is not JSON"))
    }

    /// containerd's verbose Status `info` map (e.g. `cniconfig`: the CNI
    /// network the plugin has loaded, as JSON).
    pub fn status_info(&self) -> Result<std::collections::HashMap<String, String>> {
        let mut c = self.runtime_service();
        let r = self.call(
            "Status",
            QUICK_CALL,
            c.status(StatusRequest { verbose: true }),
        )?;
        Ok(r.info)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime_service();
        self.call(
            "StopPodSandbox",
            self.slow_call,
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }),
        )
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime_service();
        self.call(
            "RemovePodSandbox",
            self.slow_call,
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }),
        )
        .map(drop)
    }

    /// Ids of every pod sandbox containerd's CRI plugin knows.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<String>> {
        let mut c = self.runtime_service();
        let r = self.call(
            "ListPodSandbox",
            QUICK_CALL,
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        )?;
        Ok(r.items.into_iter().map(|s| s.id).collect())
    }

    /// Ids of every container containerd's CRI plugin knows.
    pub fn list_containers(&self) -> Result<Vec<String>> {
        let mut c = self.runtime_service();
        let r = self.call(
            "ListContainers",
            QUICK_CALL,
            c.list_containers(ListContainersRequest { filter: None }),
        )?;
        Ok(r.containers.into_iter().map(|s| s.id).collect())
    }

    pub fn create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String> {
        let mut c = self.runtime_service();
        let r = self.call(
            "CreateContainer",
            self.slow_call,
            c.create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config.clone()),
                sandbox_config: Some(pod_config.clone()),
            }),
        )?;
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime_service();
        self.call(
            "StartContainer",
            self.slow_call,
            c.start_container(StartContainerRequest {
                container_id: id.into(),
            }),
        )
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime_service();
        self.call(
            "RemoveContainer",
            self.slow_call,
            c.remove_container(RemoveContainerRequest {
                container_id: id.into(),
            }),
        )
        .map(drop)
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let mut c = self.runtime_service();
        let r = self.call(
            "ContainerStatus",
            QUICK_CALL,
            c.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }),
        )?;
        r.status
            .with_context(|| format!("ContainerStatus of {id} carries no status"))
    }

    /// ExecSync with a bound of `timeout` inside the runtime (and a little
    /// more on the call itself).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let mut c = self.runtime_service();
        let r = self.call(
            &format!("ExecSync {cmd:?}"),
            timeout + Duration::from_secs(30),
            c.exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout.as_secs() as i64,
            }),
        )?;
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            exit_code: r.exit_code,
        })
    }

    pub fn update_container_resources(
        &self,
        id: &str,
        linux: LinuxContainerResources,
    ) -> Result<()> {
        let mut c = self.runtime_service();
        self.call(
            "UpdateContainerResources",
            self.slow_call,
            c.update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(linux),
                ..Default::default()
            }),
        )
        .map(drop)
    }
}

/// A CRI call the runtime answered with an error status.
#[derive(Debug)]
pub struct CriError {
    pub call: String,
    pub code: tonic::Code,
    pub message: String,
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CRI {} failed: {:?}: {}",
            self.call, self.code, self.message
        )
    }
}

impl std::error::Error for CriError {}
