# What an operator's machine gets beyond the binary, and the Debian package (scripts/package.sh: cpack -G DEB).
#
# `cmake --install` installs component "relay" (the daemon, its SQL, man pages, bash completion) and "demo"
# (the demo receiver). The package holds "relay" and "debian" (the systemd units in /lib/systemd/system, the
# sample configuration as a conffile in /etc/appointment-relay, the credentials directory, copyright and
# changelog): those are only installed into a package, never by a plain `cmake --install` (EXCLUDE_FROM_ALL),
# which must not overwrite an operator's /etc. The demo receiver stays out of the package: it is a test tool
# (it accepts any webhook and prints it), not something a production host should get.
include(GNUInstallDirs)

set(AR_DEBIAN_DIR ${CMAKE_CURRENT_LIST_DIR}/debian)
set(AR_PACKAGE_NAME appointment-relay)
set(AR_DOC_DIR ${CMAKE_INSTALL_DATADIR}/doc/${AR_PACKAGE_NAME})

# Man pages: written in scdoc (man/*.scd), built when scdoc is installed (scripts/install-deps.sh has it).
find_program(SCDOC scdoc)
set(AR_MAN_PAGES appointment-relay.1 appointment-relay.toml.5)
if(SCDOC)
  set(AR_MAN_OUTPUTS)
  foreach(page ${AR_MAN_PAGES})
    set(source ${CMAKE_CURRENT_SOURCE_DIR}/man/${page}.scd)
    set(output ${CMAKE_CURRENT_BINARY_DIR}/man/${page}.gz)
    string(REGEX MATCH "[0-9]$" section ${page})
    # gzip -n: no name or time stamp in the archive, so the same source gives the same bytes.
    add_custom_command(OUTPUT ${output}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/man
      COMMAND sh -c "'${SCDOC}' < '${source}' | gzip -9n > '${output}'"
      DEPENDS ${source} VERBATIM)
    list(APPEND AR_MAN_OUTPUTS ${output})
    install(FILES ${output} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section} COMPONENT relay)
  endforeach()
  add_custom_target(man_pages ALL DEPENDS ${AR_MAN_OUTPUTS})
else()
  message(STATUS "scdoc not found: no man pages (apt-get install scdoc)")
endif()

install(FILES config/appointment-relay.bash-completion
        DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions RENAME appointment-relay COMPONENT relay)

# The Debian package's own files.
install(FILES config/appointment-relay.service config/appointment-relay@.service
        DESTINATION /lib/systemd/system COMPONENT debian EXCLUDE_FROM_ALL)
install(FILES config/appointment-relay.toml DESTINATION /etc/appointment-relay COMPONENT debian EXCLUDE_FROM_ALL)
# Where the units load their credentials from (LoadCredential=): root's alone, and it must exist for the unit
# to start.
install(DIRECTORY DESTINATION /etc/appointment-relay/credentials
        DIRECTORY_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE COMPONENT debian EXCLUDE_FROM_ALL)
install(FILES ${AR_DEBIAN_DIR}/copyright DESTINATION ${AR_DOC_DIR} COMPONENT debian EXCLUDE_FROM_ALL)
install(FILES ${AR_DEBIAN_DIR}/lintian-overrides DESTINATION ${CMAKE_INSTALL_DATADIR}/lintian/overrides
        RENAME ${AR_PACKAGE_NAME} COMPONENT debian EXCLUDE_FROM_ALL)
# A native package's changelog is changelog.gz; its newest entry must be this version.
file(STRINGS ${AR_DEBIAN_DIR}/changelog AR_CHANGELOG_TOP LIMIT_COUNT 1)
if(NOT AR_CHANGELOG_TOP MATCHES "^${AR_PACKAGE_NAME} \\(${PROJECT_VERSION}\\) ")
  message(FATAL_ERROR "cmake/debian/changelog: the newest entry is not version ${PROJECT_VERSION} "
                      "(project() in CMakeLists.txt): '${AR_CHANGELOG_TOP}'")
endif()
set(AR_CHANGELOG_GZ ${CMAKE_CURRENT_BINARY_DIR}/debian/changelog.gz)
add_custom_command(OUTPUT ${AR_CHANGELOG_GZ}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/debian
  COMMAND sh -c "gzip -9n < '${AR_DEBIAN_DIR}/changelog' > '${AR_CHANGELOG_GZ}'"
  DEPENDS ${AR_DEBIAN_DIR}/changelog VERBATIM)
add_custom_target(debian_changelog ALL DEPENDS ${AR_CHANGELOG_GZ})
install(FILES ${AR_CHANGELOG_GZ} DESTINATION ${AR_DOC_DIR} COMPONENT debian EXCLUDE_FROM_ALL)

# CPack: one .deb of the components "relay" and "debian", installed under /usr.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME ${AR_PACKAGE_NAME})
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "appointment-relay maintainers <maintainers@appointment-relay.example>"
    CACHE STRING "The Maintainer of the Debian package")
# Under /usr whatever prefix the build was configured with (a test build's is /usr/local).
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_INSTALL_PREFIX /usr)
# The units and the conffile have absolute destinations: staged under DESTDIR like everything else.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_CMAKE_PROJECTS
    "${CMAKE_BINARY_DIR};${PROJECT_NAME};relay;/" "${CMAKE_BINARY_DIR};${PROJECT_NAME};debian;/")
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Canvas Medical appointment changes as signed webhooks")
# The extended description; CPack indents it and marks the empty line as Debian wants.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "appointment-relay is a daemon that turns appointment changes in a
Canvas Medical (EHR) PostgreSQL database into Canvas's Appointment
Notification webhooks (created, rescheduled, cancelled, no show, reverted,
checked in), POSTed to the configured endpoints, signed per the Standard
Webhooks specification, at least once and in order per appointment.

The package ships the daemon, its database migrations, a systemd unit and a
template unit for one relay per database, a sample configuration, man pages
and bash completion.")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Depends from the libraries the binary links (dpkg-shlibdeps), and procps for the units' ExecReload=/bin/kill
# (a minimal Debian has no /bin/kill).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS procps)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${AR_DEBIAN_DIR}/conffiles)
include(CPack)
