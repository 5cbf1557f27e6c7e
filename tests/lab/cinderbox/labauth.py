"""What keystonemiddleware does for a service token, for the lab's cinder without keystone (a paste filter put
before cinder's noauth middleware): a request carrying X-Service-Token is a service's (nova's, configured with
[service_user] send_service_user_token), so it gets X-Service-Roles: service; roles a client sends itself are
dropped.  Cinder then lets nova delete an in-use attachment (bug #2004555) and refuses it to anyone else, as in a
cloud with keystone.  Runs under the nova venv's python, inside cinder-api.
"""


class ServiceToken(object):
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        environ.pop('HTTP_X_SERVICE_ROLES', None)
        if environ.get('HTTP_X_SERVICE_TOKEN'):
            environ['HTTP_X_SERVICE_ROLES'] = 'service'
        return self.app(environ, start_response)


def filter_factory(global_conf, **local_conf):
    return ServiceToken
