"""The lab's cinder volume driver: every volume is a sparse file `volume-<id>` in one directory, as cinder's NFS
driver keeps them on its share, so a test can write a marker into a volume and read it back after an evacuation,
and "the volume exists on its backend" is a file that is there or not.

Loaded by cinder-volume (`volume_driver = labdriver.LabFileDriver`, tests/lab/cinderbox on its PYTHONPATH); runs
under the nova venv's python, imports only cinder and the standard library.  No hardware, no root, no os-brick: the
connection info names the file, and nova's fake virt driver accepts any.
"""
import os
import shutil

from oslo_config import cfg
from oslo_log import log as logging

from cinder import exception
from cinder.volume import driver

LOG = logging.getLogger(__name__)

lab_opts = [
    cfg.StrOpt('lab_volume_dir', help='directory holding the volume files (the "share")'),
]
cfg.CONF.register_opts(lab_opts, group='backend_defaults')

GiB = 1024 ** 3


class LabFileDriver(driver.VolumeDriver):
    """Volumes and snapshots as sparse files; connections name the file (driver_volume_type 'file')."""

    VERSION = '1.0.0'
    CI_WIKI_NAME = 'crashup_lab'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(lab_opts)
        self.backend_name = self.configuration.safe_get('volume_backend_name') or 'lab'
        self.dir = self.configuration.safe_get('lab_volume_dir')

    # -- setup ----------------------------------------------------------------------------------------------------
    def do_setup(self, context):
        if not self.dir:
            raise exception.InvalidConfigurationValue(option='lab_volume_dir', value=self.dir)
        os.makedirs(self.dir, exist_ok=True)

    def check_for_setup_error(self):
        if not os.access(self.dir, os.W_OK):
            raise exception.VolumeBackendAPIException(data='%s is not writable' % self.dir)

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _update_volume_stats(self):
        st = os.statvfs(self.dir)
        self._stats = {
            'volume_backend_name': self.backend_name, 'vendor_name': 'crashup lab', 'driver_version': self.VERSION,
            'storage_protocol': 'file', 'total_capacity_gb': st.f_blocks * st.f_frsize // GiB,
            'free_capacity_gb': st.f_bavail * st.f_frsize // GiB, 'reserved_percentage': 0,
            'thin_provisioning_support': True, 'thick_provisioning_support': False,
            'max_over_subscription_ratio': 1000, 'multiattach': False, 'sparse_copy_volume': True,
        }

    # -- volumes and snapshots ------------------------------------------------------------------------------------
    def _make(self, name, size_gb, source=None):
        path = self._path(name)
        if source is not None:
            shutil.copyfile(self._path(source), path)
        with open(path, 'ab') as f:
            f.truncate(max(os.fstat(f.fileno()).st_size, size_gb * GiB))   # sparse: no disk used
        LOG.info('lab volume file %s (%d GiB)', path, size_gb)

    def create_volume(self, volume):
        self._make(volume.name, volume.size)

    def create_cloned_volume(self, volume, src_vref):
        self._make(volume.name, volume.size, source=src_vref.name)

    def create_volume_from_snapshot(self, volume, snapshot):
        self._make(volume.name, volume.size, source=snapshot.name)

    def delete_volume(self, volume):
        try:
            os.unlink(self._path(volume.name))
        except FileNotFoundError:
            LOG.warning('lab volume file of %s already gone', volume.id)

    def extend_volume(self, volume, new_size):
        self._make(volume.name, new_size)

    def create_snapshot(self, snapshot):
        self._make(snapshot.name, snapshot.volume_size, source=snapshot.volume_name)

    def delete_snapshot(self, snapshot):
        try:
            os.unlink(self._path(snapshot.name))
        except FileNotFoundError:
            pass

    # -- exports and connections: the file is the export ----------------------------------------------------------
    def ensure_export(self, context, volume):
        pass

    def create_export(self, context, volume, connector):
        pass

    def remove_export(self, context, volume):
        pass

    def initialize_connection(self, volume, connector):
        return {'driver_volume_type': 'file',
                'data': {'device_path': self._path(volume.name), 'name': volume.name, 'access_mode': 'rw',
                         'volume_id': volume.id}}

    def terminate_connection(self, volume, connector, **kwargs):
        pass
